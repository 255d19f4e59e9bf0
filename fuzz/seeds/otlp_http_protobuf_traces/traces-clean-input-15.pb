
Ù


service.name	
billing¹

golden¬
wGAƒ@
üàn»œ™µGœcJÑ3ëEB*use09€wˆôQr†A@>¶ôQr†J
toctou.phase
useJ#
toctou.resource
invoices/inv-1J
toctou.operation
voidJ
toctou.resource.version