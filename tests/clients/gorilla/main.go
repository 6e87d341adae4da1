// Command gorilla is the client-matrix driver for github.com/gorilla/websocket:
// it runs the cases of a CASES.json file one at a time and prints, per case, one
// JSON line with what gorilla's public API reported. tests/clients/PROTOCOL.md is
// the contract.
//
// gorilla specifics, reported as the API gives them:
//   - a close frame arrives as a *websocket.CloseError from ReadMessage (code, text);
//     a close code gorilla refuses (e.g. 1014) is a plain error instead, so code and
//     reason stay null and the error text goes to "error".
//   - a failed handshake returns the *http.Response (status) with the error.
//   - fragments: a message writer only cuts a frame when its write buffer is full
//     and has no public Flush, so exact parts cannot be sent; the joined text goes
//     as one message and "fragments" is listed in "unsupported".
//   - there is no "clean close" flag: "clean" is always null.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
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
	var ce *websocket.CloseError
	return errors.Is(err, websocket.ErrCloseSent) || errors.As(err, &ce)
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

	var mu sync.Mutex // guards r.Messages, r.Pongs, errs
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

	dialer := websocket.Dialer{Subprotocols: c.Protocols}
	conn, resp, err := dialer.DialContext(ctx, c.URL, nil)
	if resp != nil {
		r.Status = &resp.StatusCode
	}
	if err != nil {
		r.Timeout = expired()
		addErr(err)
		return r
	}
	defer conn.Close()
	r.Opened = true
	proto := conn.Subprotocol()
	r.Protocol = &proto
	conn.SetReadLimit(64 << 20)
	conn.SetWriteDeadline(deadline)

	events := make(chan struct{}, 1) // a message or a pong arrived
	notify := func() {
		select {
		case events <- struct{}{}:
		default:
		}
	}
	conn.SetPongHandler(func(string) error {
		mu.Lock()
		r.Pongs++
		mu.Unlock()
		notify()
		return nil
	})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			typ, data, err := conn.ReadMessage()
			if err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					r.Code, r.Reason = &ce.Code, &ce.Text
				} else {
					addErr(err)
				}
				return
			}
			mu.Lock()
			r.Messages = append(r.Messages, record(typ == websocket.BinaryMessage, data))
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
			err = conn.WriteMessage(websocket.BinaryMessage, b)
		case s["send"] == "fragments":
			var parts []string
			for _, p := range s["parts"].([]interface{}) {
				parts = append(parts, p.(string))
			}
			r.Unsupported = append(r.Unsupported, "fragments")
			err = conn.WriteMessage(websocket.TextMessage, []byte(strings.Join(parts, "")))
		case s["send"] == "text" && s["repeat"] != nil:
			text := strings.Repeat(s["repeat"].(string), int(s["times"].(float64)))
			err = conn.WriteMessage(websocket.TextMessage, []byte(text))
		case s["send"] == "text":
			err = conn.WriteMessage(websocket.TextMessage, []byte(s["data"].(string)))
		case s["expect"] != nil:
			n := int(s["expect"].(float64))
			waitFor(func() bool { return len(r.Messages) >= n })
		case s["ping"] != nil:
			mu.Lock()
			before := r.Pongs
			mu.Unlock()
			err = conn.WriteControl(websocket.PingMessage, []byte(s["ping"].(string)), deadline)
			if err == nil {
				waitFor(func() bool { return r.Pongs > before })
			}
		case s["sleep_ms"] != nil:
			select {
			case <-time.After(time.Duration(s["sleep_ms"].(float64)) * time.Millisecond):
			case <-ctx.Done():
			}
		case s["close"] != nil:
			reason, _ := s["reason"].(string)
			msg := websocket.FormatCloseMessage(int(s["close"].(float64)), reason)
			err = conn.WriteControl(websocket.CloseMessage, msg, deadline)
		}
		if err != nil {
			if !isCloseErr(err) {
				addErr(err)
			}
			break
		}
	}

	// Wait until the connection has ended; on timeout, abort it (close the TCP connection).
	select {
	case <-readerDone:
	case <-ctx.Done():
		r.Timeout = true
		conn.Close()
		<-readerDone
	}
	return r
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Printf("gorilla/websocket %s, %s\n", libVersion, runtime.Version())
		return
	}
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gorilla CASES.json | --version")
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
