
²


service.name
store”

golden‡	€–’îQr†	*
audit2
toctou.audit.action
update2!
toctou.resource
config/flags2$
toctou.resource.version	
etag-b7YÀØ¡îQr†