# Permissions from verified token claims, in the two common styles:
#   - a "permissions" claim listing "METHOD:/path/glob" entries;
#   - OAuth scopes, mapped to routes in data.config.scope_routes.
package lib.permissions

import data.lib.util

grants contains "permission" if {
	some permission in input.identity.claims.permissions
	i := indexof(permission, ":")
	i > 0
	upper(substring(permission, 0, i)) == util.method
	glob.match(substring(permission, i + 1, -1), ["/"], util.path)
}

grants contains "scope" if {
	some route in data.config.scope_routes
	route.method == util.method
	glob.match(route.path, ["/"], util.path)
	route.scope in input.identity.scopes
}
