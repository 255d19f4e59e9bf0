
ü


service.name
shopß

goldenÒ
ñÅŒ}sèï…ÓŸ3s#Oõ°åÿBAÎ*use09€ÃÃïQr†A@ŠñïQr†J
toctou.phase
useJ$
toctou.resource
inventory/sku-7J
toctou.operation	
reserveJ
toctou.resource.versionJ 
toctou.use.outcome

conflict