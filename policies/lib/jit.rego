# Just-in-time access: time-bound grants in data.config.jit_grants, each for
# one subject, some methods and a path glob, until it expires. An expired
# grant grants nothing; no one has to remember to revoke it.
package lib.jit

import data.lib.util.request_method
import data.lib.util.request_path

grants contains "jit_grant" if {
	some grant in data.config.jit_grants
	grant.subject == input.identity.subject
	request_method in grant.methods
	glob.match(grant.path, ["/"], request_path)
	time.now_ns() < time.parse_rfc3339_ns(grant.expires)
}
