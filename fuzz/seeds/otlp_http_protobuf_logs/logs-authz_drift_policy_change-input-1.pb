
Ï


service.name
iam³

golden¦	€–’îQr†	*
audit2&
toctou.audit.action
policy_change2&
toctou.resource
policies/docs-acl2
toctou.resource.version
42
toctou.actor
adminYÀØ¡îQr†