
ú


service.name
payŞ

goldenÑ
ÄğÅ~îWÄãÕ3…}Ùh~WR²Å„d*use09€ÃÃïQr†A@ŠñïQr†J
toctou.phase
useJ#
toctou.resource
payments/evt-9J!
toctou.idempotency_key
evt-9J
toctou.operation
chargeJ
toctou.resource.version