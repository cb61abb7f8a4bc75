# Public pages: anyone may GET or HEAD what is under /public/.
package lib.public

import data.lib.util

grants contains "public" if {
	util.method in {"GET", "HEAD"}
	input.parsed_path[0] == "public"
}
