
å


service.name
dbÊ

golden½	€ÞzðQr†	*
audit2
toctou.audit.action
update2$
toctou.resource
inventory/sku-12
toctou.resource.version
327
toctou.request_id"
 a2cc5cecc9371f42d55fa8c64c8de693YÀ ŠðQr†