
è


service.name
apiÌ

golden¿	€JWóQr†	*
audit2!
toctou.audit.action

finalize2$
toctou.resource
claims/ns/pod-32
toctou.resource.version
227
toctou.request_id"
 cfd97b81da970926d0c29e0e39ec7e2aYÀŒfóQr†