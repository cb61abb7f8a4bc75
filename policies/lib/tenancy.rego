# Role- and attribute-based rules:
#   - tenant isolation: /api/tenants/<tenant>/... only for tokens whose
#     "tenant" claim is that tenant, and then by role (viewers read,
#     editors write, admins do anything);
#   - departments: /api/reports/<department> for members of that
#     department, and for auditors.
package lib.tenancy

import data.lib.util.request_method

tenant := input.parsed_path[2] if {
	input.parsed_path[0] == "api"
	input.parsed_path[1] == "tenants"
}

denials contains "tenant_mismatch" if {
	tenant
	not input.identity.claims.tenant == tenant
}

denials contains "role_required" if {
	input.identity.claims.tenant == tenant
	not role_allows
}

grants contains "tenant_member" if {
	input.identity.claims.tenant == tenant
	role_allows
}

role_allows if {
	request_method in {"GET", "HEAD"}
	some role in input.identity.claims.roles
	role in {"viewer", "editor", "admin"}
}

role_allows if {
	request_method in {"POST", "PUT", "PATCH"}
	some role in input.identity.claims.roles
	role in {"editor", "admin"}
}

role_allows if "admin" in input.identity.claims.roles

grants contains "department" if {
	input.parsed_path[0] == "api"
	input.parsed_path[1] == "reports"
	request_method == "GET"
	input.identity.claims.department == input.parsed_path[2]
}

grants contains "auditor" if {
	input.parsed_path[0] == "api"
	input.parsed_path[1] == "reports"
	request_method == "GET"
	"auditor" in input.identity.claims.roles
}
