#ifndef WSGATE_CCURLSHIM_H
#define WSGATE_CCURLSHIM_H

#include <curl/curl.h>

/* curl_easy_setopt / curl_easy_getinfo / curl_multi_setopt are variadic and
 * cannot be called from Swift. These typed wrappers are all wsgate needs. */

typedef size_t (*wsgate_curl_data_cb)(char *data, size_t size, size_t nmemb, void *userdata);

CURLcode wsgate_curl_easy_setopt_long(CURL *handle, CURLoption option, long value);
CURLcode wsgate_curl_easy_setopt_ptr(CURL *handle, CURLoption option, const void *value);
CURLcode wsgate_curl_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value);
CURLcode wsgate_curl_easy_setopt_write_function(CURL *handle, wsgate_curl_data_cb callback);
CURLcode wsgate_curl_easy_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode wsgate_curl_easy_getinfo_string(CURL *handle, CURLINFO info, const char **value);
CURLcode wsgate_curl_easy_getinfo_ptr(CURL *handle, CURLINFO info, void **value);
CURLMcode wsgate_curl_multi_setopt_long(CURLM *multi, CURLMoption option, long value);

#endif
