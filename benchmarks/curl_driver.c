/*
 * curl_driver: libcurl's own cost per request, for scenario (e) of
 * benchmarks/run.py (compiled there with `-O2 -Wall -Werror ... -lcurl`).
 *
 * Why it exists: in scenario (e) every WebSocket message becomes one POST
 * that wsgate makes with libcurl. `wrk` POSTing to the same echo is a ceiling
 * for the echo, not for anything that uses libcurl: wrk's HTTP client is far
 * cheaper than libcurl's. This driver does what wsgate's http:// route does
 * with libcurl and nothing else -- one thread, one multi handle driven by
 * curl_multi_socket_action from epoll (as wsgate's CCurlShim does), N easy
 * handles each with one POST in flight, keep-alive connections reused from
 * the multi handle's cache, the same request headers -- so "wsgate as a share
 * of the curl driver" is wsgate's rate against libcurl's own limit on this
 * machine, in the same run.
 *
 *   curl_driver URL CONNECTIONS BODY_BYTES SECONDS
 *
 * Runs for SECONDS (re-adding each handle as soon as its request completes),
 * then lets the requests in flight finish (not counted) and prints one JSON
 * line: requests, errors, new_connections (= CONNECTIONS when keep-alive
 * works), seconds, requests_per_s, and the process's own CPU
 * time over the measured window (getrusage: user, system, total). Exit 1 on
 * bad arguments or set-up failure.
 */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>

static int epfd;
static long timer_ms = -1; /* libcurl's requested timeout; -1: none */
static double timer_set_at;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_s(struct rusage *r, int user) {
    struct timeval *t = user ? &r->ru_utime : &r->ru_stime;
    return t->tv_sec + t->tv_usec / 1e6;
}

/* CURLMOPT_SOCKETFUNCTION: keep epoll's interest set in step with libcurl's. */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    (void)easy, (void)userp, (void)socketp;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }
    struct epoll_event ev = {0};
    ev.data.fd = s;
    if (what & CURL_POLL_IN) ev.events |= EPOLLIN;
    if (what & CURL_POLL_OUT) ev.events |= EPOLLOUT;
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT)
        epoll_ctl(epfd, EPOLL_CTL_ADD, s, &ev);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: remember when libcurl wants CURL_SOCKET_TIMEOUT. */
static int on_timer(CURLM *multi, long timeout_ms, void *userp) {
    (void)multi, (void)userp;
    timer_ms = timeout_ms;
    timer_set_at = now_s();
    return 0;
}

/* The response body (the echoed POST body) is read and dropped. */
static size_t on_data(char *ptr, size_t size, size_t n, void *userp) {
    (void)ptr, (void)userp;
    return size * n;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s URL CONNECTIONS BODY_BYTES SECONDS\n", argv[0]);
        return 1;
    }
    const char *url = argv[1];
    int conns = atoi(argv[2]);
    long body_len = atol(argv[3]);
    double seconds = atof(argv[4]);
    if (conns < 1 || body_len < 0 || seconds <= 0) {
        fprintf(stderr, "curl_driver: bad arguments\n");
        return 1;
    }
    char *body = malloc(body_len + 1);
    CURL **easy = calloc(conns, sizeof *easy);
    if (!body || !easy || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 1;
    memset(body, 'a', body_len);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    CURLM *multi = curl_multi_init();
    if (epfd < 0 || !multi) return 1;
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long)conns); /* keep every connection */

    /* The headers wsgate's http:// route sends for a binary message. */
    struct curl_slist *headers = NULL;
    headers = curl_slist_append(headers, "Content-Type: application/octet-stream");
    headers = curl_slist_append(headers, "X-WSGate-Message-Type: binary");
    headers = curl_slist_append(headers, "Expect:");
    for (int i = 0; i < conns; i++) {
        CURL *h = easy[i] = curl_easy_init();
        if (!h) return 1;
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
        curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 10000L);
    }

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double start = now_s(), deadline = start + seconds, stopped = 0;
    long requests = 0, errors = 0, new_connections = 0;
    int running = 0, in_flight = conns;
    for (int i = 0; i < conns; i++) curl_multi_add_handle(multi, easy[i]);

    /* Until the deadline, then until the last request in flight is done
     * (bounded: 10 s more at most). */
    while (in_flight > 0 && now_s() < deadline + 10) {
        int wait = 100;
        if (timer_ms >= 0) {
            long left = timer_ms - (long)((now_s() - timer_set_at) * 1000);
            wait = left < 0 ? 0 : (left < wait ? (int)left : wait);
        }
        struct epoll_event ev[64];
        int n = epoll_wait(epfd, ev, 64, wait);
        for (int i = 0; i < n; i++) {
            int flags = (ev[i].events & EPOLLIN ? CURL_CSELECT_IN : 0) | (ev[i].events & EPOLLOUT ? CURL_CSELECT_OUT : 0)
                      | (ev[i].events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
            curl_multi_socket_action(multi, ev[i].data.fd, flags, &running);
        }
        if (timer_ms >= 0 && (now_s() - timer_set_at) * 1000 >= timer_ms) {
            timer_ms = -1;
            curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
        }
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(multi, &left))) {
            if (msg->msg != CURLMSG_DONE) continue;
            CURL *h = msg->easy_handle;
            long status = 0, connects = 0;
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
            curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &connects); /* 0: a kept-alive connection was reused */
            new_connections += connects;
            int ok = msg->data.result == CURLE_OK && status == 200;
            curl_multi_remove_handle(multi, h);
            if (stopped == 0 && now_s() >= deadline) {
                stopped = now_s();
                getrusage(RUSAGE_SELF, &ru1);
            }
            if (stopped == 0) {
                if (ok) requests++;
                else errors++;
                curl_multi_add_handle(multi, h); /* next POST, same cached connection */
            } else {
                in_flight--;
            }
        }
    }
    if (stopped == 0) { /* only if requests hung past the deadline */
        stopped = now_s();
        getrusage(RUSAGE_SELF, &ru1);
        errors += in_flight;
    }

    double elapsed = stopped - start;
    double user = cpu_s(&ru1, 1) - cpu_s(&ru0, 1), sys = cpu_s(&ru1, 0) - cpu_s(&ru0, 0);
    printf("{\"connections\":%d,\"body_bytes\":%ld,\"requests\":%ld,\"errors\":%ld,\"new_connections\":%ld,\"seconds\":%.3f,"
           "\"requests_per_s\":%.1f,\"cpu_user_s\":%.3f,\"cpu_sys_s\":%.3f,\"cpu_s\":%.3f,\"curl\":\"%s\"}\n",
           conns, body_len, requests, errors, new_connections, elapsed, requests / elapsed, user, sys, user + sys,
           curl_version_info(CURLVERSION_NOW)->version);

    for (int i = 0; i < conns; i++) {
        curl_multi_remove_handle(multi, easy[i]);
        curl_easy_cleanup(easy[i]);
    }
    curl_multi_cleanup(multi);
    curl_slist_free_all(headers);
    curl_global_cleanup();
    free(easy);
    free(body);
    return 0;
}
