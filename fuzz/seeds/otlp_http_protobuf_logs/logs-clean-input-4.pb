
å


service.name
dbÊ

golden½	@xwïQr†	*
audit2
toctou.audit.action
update2$
toctou.resource
inventory/sku-72
toctou.resource.version
227
toctou.request_id"
 4d814b3d96c73988cccb34af3bbfda93Y€º†ïQr†