# Step-up authentication for admin and destructive operations: DELETE
# anywhere and anything under /admin/ need multi-factor authentication
# ("amr" with a second factor, or an "acr" listed in data.config) and an
# authentication at most data.config.max_auth_age_seconds old.
package lib.stepup

import data.lib.util.request_method

sensitive if request_method == "DELETE"

sensitive if input.parsed_path[0] == "admin"

denials contains "mfa_required" if {
	sensitive
	input.identity != null
	not mfa
}

denials contains "reauthentication_required" if {
	sensitive
	mfa
	not recent
}

mfa if {
	some method in input.identity.claims.amr
	method in {"mfa", "otp", "hwk", "swk", "fido"}
}

mfa if input.identity.claims.acr in data.config.mfa_acr_values

recent if {
	age := (time.now_ns() / 1000000000) - input.identity.claims.auth_time
	age <= data.config.max_auth_age_seconds
}
