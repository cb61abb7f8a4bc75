# Permissions from verified token claims, in the two common styles:
#   - a "permissions" claim listing "METHOD:/path/glob" entries;
#   - OAuth scopes, mapped to routes in data.config.route_scopes.
package lib.permissions

import data.lib.util.request_method
import data.lib.util.request_path

grants contains "permission" if {
	some permission in input.identity.claims.permissions
	i := indexof(permission, ":")
	i > 0
	upper(substring(permission, 0, i)) == request_method
	glob.match(substring(permission, i + 1, -1), ["/"], request_path)
}

# data.config.route_scopes maps a method and a route to the scope it needs.
# A route is an exact path, a path ending in "/*" (one more segment) or in
# "/**" (one or more). The table is looked up by the few routes that could
# match this request's path, never scanned, so a decision costs the same
# with ten routes or ten thousand.
grants contains "scope" if {
	some route in candidate_routes
	scope := data.config.route_scopes[request_method][route]
	scope in input.identity.scopes
}

candidate_routes contains request_path

candidate_routes contains route if {
	n := count(input.parsed_path)
	n > 0
	route := concat("/", array.concat(array.concat([""], array.slice(input.parsed_path, 0, n - 1)), ["*"]))
}

candidate_routes contains route if {
	some i in numbers.range(0, count(input.parsed_path) - 1)
	route := concat("/", array.concat(array.concat([""], array.slice(input.parsed_path, 0, i)), ["**"]))
}
