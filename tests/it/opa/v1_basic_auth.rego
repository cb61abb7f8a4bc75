package envoy.authz

import input.attributes.request.http as http_request

default allow := false

allow if {
    some perm in role_perms[user_roles[user_name][_]]
    perm.method == http_request.method
    perm.path == http_request.path
}

user_name := parsed if {
    [_, encoded] := split(http_request.headers.authorization, " ")
    [parsed, _] := split(base64url.decode(encoded), ":")
}

user_roles := data.user_roles
role_perms := data.role_perms
