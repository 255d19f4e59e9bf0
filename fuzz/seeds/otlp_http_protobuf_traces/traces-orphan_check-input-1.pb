
à


service.name
shopÃ

golden¶
ñÅŒ}sèï…ÓŸ3s#OŸ6ë©Q¢*check09@KFîQr†AÀÏdîQr†J
toctou.phase
checkJ$
toctou.resource
inventory/sku-5J
toctou.resource.versionJ
toctou.check.decision
deny