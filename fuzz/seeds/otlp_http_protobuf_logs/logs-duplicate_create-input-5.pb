
Ê


service.name
api 

goldenΩ	Ä±IÔQrÜ	*
audit2
toctou.audit.action
create2$
toctou.resource
claims/ns/pod-12
toctou.resource.version
227
toctou.request_id"
 70a13f3c84519194bd25649f90658e9fY¿ÛXÔQrÜ