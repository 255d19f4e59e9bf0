
Â


service.name
db 

goldenΩ	Ä±IÔQrÜ	*
audit2
toctou.audit.action
update2$
toctou.resource
inventory/sku-12
toctou.resource.version
227
toctou.request_id"
 f1c58c7d73e80cef85d39f1a3373234fY¿ÛXÔQrÜ