#ifndef WSGATE_CCURL_SHIM_H
#define WSGATE_CCURL_SHIM_H
#include <curl/curl.h>
#endif
