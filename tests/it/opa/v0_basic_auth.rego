package envoy.authz

import input.attributes.request.http as http_request

default allow = false

allow {
    required_roles[r]
}

required_roles[r] {
    perm := role_perms[user_roles[user_name][_]][_]
    perm.method == http_request.method
    perm.path == http_request.path
    r := perm
}

user_name = parsed {
    [_, encoded] := split(http_request.headers.authorization, " ")
    [parsed, _] := split(base64url.decode(encoded), ":")
}

user_roles = {
    "alice": ["guest"],
    "bob": ["admin"]
}

role_perms = {
    "guest": [
        {"method": "GET",  "path": "/productpage"},
    ],
    "admin": [
        {"method": "GET",  "path": "/productpage"},
        {"method": "GET",  "path": "/api/v1/products"},
    ],
}
