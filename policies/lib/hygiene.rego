# Request hygiene: a path that an upstream could resolve differently from
# the policy (dot segments, encoded slashes or backslashes) is refused
# before any grant is considered, so /api/tenants/acme%2F..%2Fglobex cannot
# pass as tenant acme and be served as tenant globex.
package lib.hygiene

denials contains "path_not_canonical" if {
	some segment in input.parsed_path
	segment in {".", ".."}
}

denials contains "path_not_canonical" if {
	raw := lower(input.attributes.request.http.path)
	some encoded in ["%2f", "%5c", "%00"]
	contains(split(raw, "?")[0], encoded)
}
