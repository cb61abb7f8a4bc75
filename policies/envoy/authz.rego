# The decision Envoy asks for (decision path envoy/authz/allow).
#
# Zero trust: nothing is allowed unless some rule grants it, any denial
# overrides every grant, and every deny carries a machine-readable reason
# (sent in x-arbiter-reason, recorded in the decision log and metrics).
# The patterns live in policies/lib/; their settings in policies/data.json.
package envoy.authz

import data.lib.device.denials as device_denials
import data.lib.hygiene.denials as hygiene_denials
import data.lib.jit.grants as jit_grants
import data.lib.network.denials as network_denials
import data.lib.permissions.grants as permission_grants
import data.lib.public.grants as public_grants
import data.lib.services.grants as service_grants
import data.lib.stepup.denials as stepup_denials
import data.lib.tenancy.denials as tenancy_denials
import data.lib.tenancy.grants as tenancy_grants

default allow := {"allowed": false, "http_status": 403, "reason": "no_matching_rule"}

allow := {"allowed": true, "headers": allow_headers} if {
	count(denials) == 0
	count(grants) > 0
}

allow := {
	"allowed": false,
	"http_status": status,
	"reason": first_denial,
	"headers": deny_headers,
} if count(denials) > 0

grants := (((public_grants | service_grants) | permission_grants) | tenancy_grants) | jit_grants

denials := (((hygiene_denials | network_denials) | device_denials) | stepup_denials) | tenancy_denials

first_denial := sort(denials)[0]

allow_headers := object.union({"x-arbiter-rule": sort(grants)[0]}, user_header)

default user_header := {}

user_header := {"x-user": input.identity.subject} if input.identity.subject

# Step-up failures ask the client to authenticate again (RFC 9470).
step_up := {"mfa_required", "reauthentication_required"}

default status := 403

status := 401 if first_denial in step_up

default deny_headers := {}

deny_headers := {"www-authenticate": "Bearer error=\"insufficient_user_authentication\""} if first_denial in step_up
