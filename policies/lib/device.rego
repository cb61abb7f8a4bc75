# Device posture: paths in data.config.sensitive_paths need a device whose
# posture the device-management service signed for this user
# (input.device.verified) and which is compliant. A compliance header from
# the client is never enough.
package lib.device

import data.lib.util.request_path

sensitive if {
	some pattern in data.config.sensitive_paths
	glob.match(pattern, ["/"], request_path)
}

denials contains "device_not_verified" if {
	sensitive
	not input.device.verified
}

denials contains "device_not_compliant" if {
	sensitive
	input.device.verified
	not input.device.compliant == true
}
