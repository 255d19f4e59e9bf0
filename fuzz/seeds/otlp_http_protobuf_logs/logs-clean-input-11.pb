
æ


service.name
apiÊ

golden½	€8İòQr†	*
audit2
toctou.audit.action
create2$
toctou.resource
claims/ns/pod-32
toctou.resource.version
127
toctou.request_id"
 cfd97b81da970926d0c29e0e39ec7e2aYÀzìòQr†