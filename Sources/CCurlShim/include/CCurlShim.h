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

/* An epoll-driven event loop for a curl multi handle (the multi_socket API):
 * libcurl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when
 * its next timeout is (CURLMOPT_TIMERFUNCTION); each readiness event becomes
 * one curl_multi_socket_action call, so the cost per event does not grow
 * with the number of transfers in flight (curl_multi_perform/poll walk all
 * of them). Everything but wsgate_curl_loop_wakeup must be called from the
 * one thread that owns the multi handle. */
typedef struct wsgate_curl_loop wsgate_curl_loop;

wsgate_curl_loop *wsgate_curl_loop_create(CURLM *multi);
void wsgate_curl_loop_destroy(wsgate_curl_loop *loop);
/* Waits up to max_wait_ms (less if libcurl's timer is due), drives libcurl
 * for every ready socket / expired timer. Returns 1 if woken by
 * wsgate_curl_loop_wakeup, 0 otherwise, -1 on error. */
int wsgate_curl_loop_run_once(wsgate_curl_loop *loop, int max_wait_ms);
/* Kicks libcurl after handles were added (runs the due timer at once). */
void wsgate_curl_loop_kick(wsgate_curl_loop *loop);
/* Thread-safe: interrupts a wait. */
void wsgate_curl_loop_wakeup(wsgate_curl_loop *loop);
