
º


service.name
legacy›

golden
$Ş‹Íº$·)	du©ûós9i-Äõ‚*use09€ÑêöQr†A@˜÷Qr†J
toctou.phase
useJ#
toctou.resource
legacy/thing-1J
toctou.operation
touch