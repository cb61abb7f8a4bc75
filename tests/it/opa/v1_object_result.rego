package envoy.authz

import input.attributes.request.http as http_request

default allow := false

allow if {
    http_request.method == "GET"
    input.parsed_path[0] == "health"
}

allow if {
    http_request.method == "GET"
    input.parsed_path == ["api", "v1", "products"]
    input.parsed_query.lang == ["en"]
}

headers["x-ext-auth-allow"] := "yes"
headers["x-validated-by"] := "security-checkpoint"

request_headers_to_remove := ["one-auth-header", "another-auth-header"]

response_headers_to_add["x-foo"] := "bar"

default status_code := 403

status_code := 200 if allow

status_code := 401 if {
    not allow
    not http_request.headers.authorization
}

body := "Authentication Failed" if status_code == 401

body := "Unauthorized Request" if status_code == 403

result["allowed"] := allow
result["headers"] := headers
result["response_headers_to_add"] := response_headers_to_add
result["request_headers_to_remove"] := request_headers_to_remove
result["body"] := body if not allow
result["http_status"] := status_code
