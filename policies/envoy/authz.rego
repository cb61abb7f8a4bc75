# The decision Envoy asks for (decision path envoy/authz/allow).
#
# Zero trust: nothing is allowed unless some rule grants it, any denial
# overrides every grant, and every deny carries a machine-readable reason
# (sent in x-arbiter-reason, recorded in the decision log and metrics).
# The patterns live in policies/lib/; their settings in policies/data.json.
package envoy.authz

import data.lib.device
import data.lib.hygiene
import data.lib.jit
import data.lib.network
import data.lib.permissions
import data.lib.public
import data.lib.services
import data.lib.stepup
import data.lib.tenancy

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

grants := (((public.grants | services.grants) | permissions.grants) | tenancy.grants) | jit.grants

denials := (((hygiene.denials | network.denials) | device.denials) | stepup.denials) | tenancy.denials

first_denial := sort(denials)[0]

allow_headers["x-arbiter-rule"] := sort(grants)[0]

allow_headers["x-user"] := input.identity.subject if input.identity.subject

# Step-up failures ask the client to authenticate again (RFC 9470).
step_up := {"mfa_required", "reauthentication_required"}

default status := 403

status := 401 if first_denial in step_up

default deny_headers := {}

deny_headers := {"www-authenticate": "Bearer error=\"insufficient_user_authentication\""} if first_denial in step_up
