
à
"
 
service.name
cfg-controller¹

golden¬
’7·Äjq’Ýéöjb•}%õcgYOuÅ‡*check09`£ºrÎ*aAà'ÙrÎ*aJ
toctou.phase
checkJ5
toctou.resource"
 k8s/configmaps/default/my-configJ#
toctou.resource.version
260014