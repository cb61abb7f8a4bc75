# Rego unit tests for lib.tenancy, run by `arbiter test` and `cargo test`.
package lib.tenancy_test

import data.lib.tenancy

request(method, path, claims) := {
	"attributes": {"request": {"http": {"method": method}}},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
	"identity": {"subject": "t", "claims": claims},
}

test_member_reads if {
	"tenant_member" in tenancy.grants with input as request("GET", "/api/tenants/acme/x", {"tenant": "acme", "roles": ["viewer"]})
}

test_other_tenant_denied if {
	"tenant_mismatch" in tenancy.denials with input as request("GET", "/api/tenants/globex/x", {"tenant": "acme", "roles": ["admin"]})
}

test_viewer_cannot_write if {
	"role_required" in tenancy.denials with input as request("POST", "/api/tenants/acme/x", {"tenant": "acme", "roles": ["viewer"]})
}

test_other_paths_untouched if {
	count(tenancy.denials) == 0 with input as request("GET", "/api/orders", {})
}
