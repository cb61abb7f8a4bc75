# Service-to-service allow-list by SPIFFE ID, in the style of Istio's
# AuthorizationPolicy: each rule in data.config.service_rules names the
# calling principals and the methods and path globs they may use. Only a
# principal from a trusted trust domain counts; Envoy takes it from the
# peer's mTLS certificate, so no header can claim it.
package lib.services

import data.lib.util.request_method
import data.lib.util.request_path
import data.lib.util.principal_name

grants contains "service" if {
	input.source.principal.trusted
	some rule in data.config.service_rules
	principal_name in rule.from.principals
	request_method in rule.to.methods
	some pattern in rule.to.paths
	glob.match(pattern, ["/"], request_path)
}
