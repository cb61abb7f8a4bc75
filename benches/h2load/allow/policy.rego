# The null decision: what a decision costs when the policy costs nothing.
package envoy.authz

allow := true
