
Ú


service.name
shop½

golden°
¢Ì\ìÉ7BÕ_¨ÆLæ“r?k­¦2*use09€–’îQr†A@]ÀîQr†J
toctou.phase
useJ$
toctou.resource
inventory/sku-6J
toctou.operation	
reserveJ
toctou.resource.version