// Command nhooyr is the client-matrix driver for nhooyr.io/websocket: it runs the
// cases of a CASES.json file one at a time and prints, per case, one JSON line with
// what nhooyr's public API reported. tests/clients/PROTOCOL.md is the contract.
//
// nhooyr specifics, reported as the API gives them:
//   - dials with CompressionMode: CompressionDisabled (its default offer of
//     permessage-deflate fails against servers answering server_max_window_bits).
//   - a close frame arrives as an error wrapping websocket.CloseError (Code, Reason);
//     any other error is reported verbatim in "error".
//   - Dial returns the *http.Response (status) with a handshake error.
//   - fragments: c.Writer sends each Write as one frame, and Close sends an extra
//     empty final (FIN) continuation frame: parts are exact, plus that empty frame.
//   - Ping takes no payload: the library sends its own counter ("1", "2", ...), and
//     only a pong for that ping ends the wait; "pongs" counts successful Pings.
//   - timeout: the case context, which Read uses, is cancelled. nhooyr 1.8.7 means to
//     send close 1008 "timed out" then, but closes the TCP connection first (a race
//     in its timeoutLoop), so in practice the connection is aborted.
//   - there is no "clean close" flag: "clean" is always null.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"nhooyr.io/websocket"
)

// libVersion is set at build time (-ldflags -X) from the Debian package version.
var libVersion = "unknown"

type Case struct {
	ID        string                   `json:"id"`
	URL       string                   `json:"url"`
	Protocols []string                 `json:"protocols"`
	Steps     []map[string]interface{} `json:"steps"`
	TimeoutMS int                      `json:"timeout_ms"`
}

type Message struct {
	Type string  `json:"type"`
	Len  int     `json:"len"`
	FNV  string  `json:"fnv"`
	Data *string `json:"data"`
}

type Result struct {
	ID          string    `json:"id"`
	Opened      bool      `json:"opened"`
	Status      *int      `json:"status"`
	Protocol    *string   `json:"protocol"`
	Messages    []Message `json:"messages"`
	Pongs       int       `json:"pongs"`
	Code        *int      `json:"code"`
	Reason      *string   `json:"reason"`
	Clean       *bool     `json:"clean"`
	Error       *string   `json:"error"`
	Unsupported []string  `json:"unsupported"`
	Timeout     bool      `json:"timeout"`
	ElapsedMS   int64     `json:"elapsed_ms"`
}

func record(binary bool, b []byte) Message {
	h := uint32(0x811c9dc5)
	for _, c := range b {
		h = (h ^ uint32(c)) * 0x01000193
	}
	m := Message{Type: "text", Len: len(b), FNV: fmt.Sprintf("%08x", h)}
	if binary {
		m.Type = "binary"
	}
	if len(b) <= 64 {
		s := string(b)
		if binary {
			s = hex.EncodeToString(b)
		}
		m.Data = &s
	}
	return m
}

// isCloseErr: errors that only say "the connection is closing/closed"; the reader
// reports the close itself, so these are not recorded (like ConnectionClosed in
// the Python reference).
func isCloseErr(err error) bool {
	return websocket.CloseStatus(err) != -1
}

func runCase(c Case) (r Result) {
	r = Result{ID: c.ID, Messages: []Message{}, Unsupported: []string{}}
	start := time.Now()
	if c.TimeoutMS <= 0 {
		c.TimeoutMS = 15000
	}
	deadline := start.Add(time.Duration(c.TimeoutMS) * time.Millisecond)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	expired := func() bool { return !time.Now().Before(deadline) }

	var mu sync.Mutex // guards r.Messages and errs (the reader goroutine writes them)
	var errs []string
	addErr := func(err error) {
		if err != nil && !expired() { // errors caused by our own timeout abort are not the library's
			mu.Lock()
			errs = append(errs, err.Error())
			mu.Unlock()
		}
	}
	defer func() {
		if len(errs) > 0 {
			s := strings.Join(errs, " | ")
			r.Error = &s
		}
		r.ElapsedMS = time.Since(start).Milliseconds()
	}()

	opts := &websocket.DialOptions{Subprotocols: c.Protocols, CompressionMode: websocket.CompressionDisabled}
	conn, resp, err := websocket.Dial(ctx, c.URL, opts)
	if resp != nil {
		r.Status = &resp.StatusCode
	}
	if err != nil {
		r.Timeout = expired()
		addErr(err)
		return r
	}
	r.Opened = true
	proto := conn.Subprotocol()
	r.Protocol = &proto
	conn.SetReadLimit(64 << 20)

	events := make(chan struct{}, 1) // a message arrived
	notify := func() {
		select {
		case events <- struct{}{}:
		default:
		}
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			typ, data, err := conn.Read(ctx)
			if err != nil {
				var ce websocket.CloseError
				if errors.As(err, &ce) {
					code := int(ce.Code)
					r.Code, r.Reason = &code, &ce.Reason
				} else {
					addErr(err)
				}
				return
			}
			mu.Lock()
			r.Messages = append(r.Messages, record(typ == websocket.MessageBinary, data))
			mu.Unlock()
			notify()
		}
	}()
	// waitFor waits until cond holds, the connection ends or the case times out.
	waitFor := func(cond func() bool) {
		for {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return
			}
			select {
			case <-events:
			case <-readerDone:
				return
			case <-ctx.Done():
				return
			}
		}
	}

steps:
	for _, s := range c.Steps {
		select {
		case <-readerDone:
			break steps
		case <-ctx.Done():
			break steps
		default:
		}
		var err error
		switch {
		case s["send"] == "binary":
			b, _ := hex.DecodeString(s["hex"].(string))
			err = conn.Write(ctx, websocket.MessageBinary, b)
		case s["send"] == "fragments":
			var w io.WriteCloser
			if w, err = conn.Writer(ctx, websocket.MessageText); err == nil {
				for _, p := range s["parts"].([]interface{}) {
					if _, err = w.Write([]byte(p.(string))); err != nil {
						break
					}
				}
				if err == nil {
					err = w.Close()
				}
			}
		case s["send"] == "text" && s["repeat"] != nil:
			text := strings.Repeat(s["repeat"].(string), int(s["times"].(float64)))
			err = conn.Write(ctx, websocket.MessageText, []byte(text))
		case s["send"] == "text":
			err = conn.Write(ctx, websocket.MessageText, []byte(s["data"].(string)))
		case s["expect"] != nil:
			n := int(s["expect"].(float64))
			waitFor(func() bool { return len(r.Messages) >= n })
		case s["ping"] != nil:
			if err = conn.Ping(ctx); err == nil {
				r.Pongs++
			}
		case s["sleep_ms"] != nil:
			select {
			case <-time.After(time.Duration(s["sleep_ms"].(float64)) * time.Millisecond):
			case <-ctx.Done():
			}
		case s["close"] != nil:
			reason, _ := s["reason"].(string)
			err = conn.Close(websocket.StatusCode(s["close"].(float64)), reason) // waits for the peer's close
		}
		if err != nil {
			if !isCloseErr(err) {
				addErr(err)
			}
			break
		}
	}

	// Wait until the connection has ended; on timeout, abort it (cancel the case context,
	// which the reader's Read is using).
	select {
	case <-readerDone:
	case <-ctx.Done():
		r.Timeout = true
		cancel()
		<-readerDone
	}
	return r
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Printf("nhooyr.io/websocket %s, %s\n", libVersion, runtime.Version())
		return
	}
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: nhooyr CASES.json | --version")
		os.Exit(2)
	}
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var cases []Case
	if err := json.Unmarshal(raw, &cases); err != nil {
		fmt.Fprintln(os.Stderr, "bad CASES.json:", err)
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout) // os.Stdout is unbuffered: each line is flushed
	out.SetEscapeHTML(false)
	for _, c := range cases {
		if err := out.Encode(runCase(c)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}
