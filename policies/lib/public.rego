# Public pages: anyone may GET or HEAD what is under /public/.
package lib.public

import data.lib.util.request_method

grants contains "public" if {
	request_method in {"GET", "HEAD"}
	input.parsed_path[0] == "public"
}
