#include "CCurlShim.h"

CURLcode wsgate_curl_easy_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode wsgate_curl_easy_setopt_ptr(CURL *handle, CURLoption option, const void *value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode wsgate_curl_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}

CURLcode wsgate_curl_easy_setopt_write_function(CURL *handle, wsgate_curl_data_cb callback) {
    return curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, callback);
}

CURLcode wsgate_curl_easy_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}

CURLcode wsgate_curl_easy_getinfo_string(CURL *handle, CURLINFO info, const char **value) {
    return curl_easy_getinfo(handle, info, value);
}

CURLcode wsgate_curl_easy_getinfo_ptr(CURL *handle, CURLINFO info, void **value) {
    return curl_easy_getinfo(handle, info, value);
}

CURLMcode wsgate_curl_multi_setopt_long(CURLM *multi, CURLMoption option, long value) {
    return curl_multi_setopt(multi, option, value);
}

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

struct wsgate_curl_loop {
    CURLM *multi;
    int epoll_fd;
    int wake_fd;
    long timeout_ms; /* -1: no timer */
    struct timespec timer_set_at;
};

static int socket_callback(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
    (void)easy;
    (void)socketp;
    wsgate_curl_loop *loop = userp;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(loop->epoll_fd, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }
    struct epoll_event ev = {0};
    ev.data.fd = s;
    if (what & CURL_POLL_IN) ev.events |= EPOLLIN;
    if (what & CURL_POLL_OUT) ev.events |= EPOLLOUT;
    if (epoll_ctl(loop->epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT) {
        epoll_ctl(loop->epoll_fd, EPOLL_CTL_ADD, s, &ev);
    }
    return 0;
}

static int timer_callback(CURLM *multi, long timeout_ms, void *userp) {
    (void)multi;
    wsgate_curl_loop *loop = userp;
    loop->timeout_ms = timeout_ms;
    clock_gettime(CLOCK_MONOTONIC, &loop->timer_set_at);
    return 0;
}

wsgate_curl_loop *wsgate_curl_loop_create(CURLM *multi) {
    wsgate_curl_loop *loop = calloc(1, sizeof(*loop));
    if (!loop) return NULL;
    loop->multi = multi;
    loop->timeout_ms = -1;
    loop->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    loop->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->epoll_fd < 0 || loop->wake_fd < 0) {
        if (loop->epoll_fd >= 0) close(loop->epoll_fd);
        if (loop->wake_fd >= 0) close(loop->wake_fd);
        free(loop);
        return NULL;
    }
    struct epoll_event ev = {0};
    ev.events = EPOLLIN;
    ev.data.fd = loop->wake_fd;
    epoll_ctl(loop->epoll_fd, EPOLL_CTL_ADD, loop->wake_fd, &ev);
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_callback);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, loop);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_callback);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, loop);
    return loop;
}

void wsgate_curl_loop_destroy(wsgate_curl_loop *loop) {
    if (!loop) return;
    curl_multi_setopt(loop->multi, CURLMOPT_SOCKETFUNCTION, NULL);
    curl_multi_setopt(loop->multi, CURLMOPT_TIMERFUNCTION, NULL);
    close(loop->epoll_fd);
    close(loop->wake_fd);
    free(loop);
}

static long remaining_timer_ms(wsgate_curl_loop *loop) {
    if (loop->timeout_ms < 0) return -1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long elapsed = (now.tv_sec - loop->timer_set_at.tv_sec) * 1000 + (now.tv_nsec - loop->timer_set_at.tv_nsec) / 1000000;
    long left = loop->timeout_ms - elapsed;
    return left < 0 ? 0 : left;
}

static void run_timer_if_due(wsgate_curl_loop *loop) {
    int running = 0;
    if (remaining_timer_ms(loop) == 0) {
        loop->timeout_ms = -1;
        curl_multi_socket_action(loop->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
}

void wsgate_curl_loop_kick(wsgate_curl_loop *loop) {
    run_timer_if_due(loop);
}

int wsgate_curl_loop_run_once(wsgate_curl_loop *loop, int max_wait_ms) {
    long wait = max_wait_ms;
    long timer = remaining_timer_ms(loop);
    if (timer >= 0 && timer < wait) wait = timer;
    struct epoll_event events[64];
    int n = epoll_wait(loop->epoll_fd, events, 64, (int)wait);
    if (n < 0) return errno == EINTR ? 0 : -1;
    int woken = 0;
    int running = 0;
    for (int i = 0; i < n; i++) {
        int fd = events[i].data.fd;
        if (fd == loop->wake_fd) {
            uint64_t value;
            while (read(loop->wake_fd, &value, sizeof(value)) > 0) {}
            woken = 1;
            continue;
        }
        int flags = 0;
        if (events[i].events & EPOLLIN) flags |= CURL_CSELECT_IN;
        if (events[i].events & EPOLLOUT) flags |= CURL_CSELECT_OUT;
        if (events[i].events & (EPOLLERR | EPOLLHUP)) flags |= CURL_CSELECT_ERR;
        curl_multi_socket_action(loop->multi, fd, flags, &running);
    }
    run_timer_if_due(loop);
    return woken;
}

void wsgate_curl_loop_wakeup(wsgate_curl_loop *loop) {
    uint64_t one = 1;
    ssize_t r = write(loop->wake_fd, &one, sizeof(one));
    (void)r;
}
