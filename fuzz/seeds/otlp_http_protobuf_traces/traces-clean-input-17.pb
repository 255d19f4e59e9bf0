
e


service.name
shopI

golden=
ZqLÚB,z¼±¢£/şÀç³%ŠNÈŸÏ¾*GET /health09€¤¹õQr†AÀæÈõQr†