# Request facts the other modules share.
package lib.util

request_method := input.attributes.request.http.method

# The decoded path without its query, as "/a/b".
request_path := concat("/", array.concat([""], input.parsed_path))

# The peer's principal as Istio's AuthorizationPolicy writes it (no "spiffe://").
principal_name := trim_prefix(input.source.principal.id, "spiffe://")
