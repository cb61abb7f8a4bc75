# Source network: /admin/ only from the admin networks, judged on the
# client address Arbiter resolved through its trusted proxies
# (input.source.ip), never on a header a client could set.
package lib.network

denials contains "source_not_allowed" if {
	input.parsed_path[0] == "admin"
	not from_admin_network
}

from_admin_network if {
	count(net.cidr_contains_matches(data.config.admin_networks, input.source.ip)) > 0
}
