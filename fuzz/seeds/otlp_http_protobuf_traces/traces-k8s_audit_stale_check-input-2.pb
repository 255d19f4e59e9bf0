
Õ
"
 
service.name
cfg-controller®

golden¡
’7·Äjq’İéöjb•}%.é¶H˜*use09`„°xÎ*aAàÏxÎ*aJ
toctou.phase
useJ5
toctou.resource"
 k8s/configmaps/default/my-configJ
toctou.operation
update