
»


service.name
shop

golden‘
¢Ì\ìÉ7BÕ_¨ÆLæ“}üjF{ö*use09€ÃÃïQr†A@ŠñïQr†J
toctou.phase
useJ$
toctou.resource
inventory/sku-2J
toctou.operation	
reserve