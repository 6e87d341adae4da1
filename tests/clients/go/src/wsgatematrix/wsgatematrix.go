// Package wsgatematrix is the part of the Go client-matrix drivers that does not
// depend on the WebSocket library: the types of tests/clients/PROTOCOL.md (the
// cases read from CASES.json, the result line printed per case), the message record
// (length, FNV-1a, data), one case's bookkeeping (deadline, errors, the handshake's
// outcome, the receive loop around the library's read, the steps that need no
// library, the wait for messages or pongs, the end of the connection) and the
// program's main loop.
//
// Each driver (tests/clients/gorilla, tests/clients/nhooyr) keeps what is its
// library's: dialing, reading and telling a close from an error, sending, pinging
// and closing, and how it aborts a connection. The build scripts compile it in
// GOPATH mode (GO111MODULE=off) with GOPATH=/usr/share/gocode:<repo>/tests/clients/go,
// so it is imported as "wsgatematrix".
package wsgatematrix

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Case is one entry of CASES.json.
type Case struct {
	ID        string   `json:"id"`
	URL       string   `json:"url"`
	Protocols []string `json:"protocols"`
	Steps     []Step   `json:"steps"`
	TimeoutMS int      `json:"timeout_ms"`
}

// Step is one step of a case as JSON gave it, one of the keys PROTOCOL.md lists:
// "send" (with "data", "repeat" and "times", "hex" or "parts"), "expect", "ping",
// "sleep_ms", "close" (with "reason"). Numbers are float64.
type Step map[string]interface{}

// Text is the message of a "send": "text" step: "data", or "repeat" "times" times.
func (st Step) Text() string {
	if st["repeat"] != nil {
		return strings.Repeat(st["repeat"].(string), int(st["times"].(float64)))
	}
	return st["data"].(string)
}

// Binary is the message of a "send": "binary" step ("hex" decoded).
func (st Step) Binary() []byte {
	b, _ := hex.DecodeString(st["hex"].(string))
	return b
}

// Parts are the frames of a "send": "fragments" step.
func (st Step) Parts() []string {
	var parts []string
	for _, p := range st["parts"].([]interface{}) {
		parts = append(parts, p.(string))
	}
	return parts
}

// Message is one received data message as the result line records it.
type Message struct {
	Type string  `json:"type"`
	Len  int     `json:"len"`
	FNV  string  `json:"fnv"`
	Data *string `json:"data"`
}

// Result is the JSON line printed for one case; nil pointers are JSON null
// ("the API reported none").
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

// Record describes a received message: its length in bytes, FNV-1a 32-bit of those
// bytes, and the text (or the hex of binary) when it is at most 64 bytes.
func Record(binary bool, b []byte) Message {
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

// Session is one case while it runs: the result being filled, the case's deadline
// (Ctx ends there), the errors the library reported, and the driver's receive loop.
//
// The receive loop (Receive) runs in its own goroutine; it adds messages, and pongs
// (AddPong, e.g. from a pong handler), under the lock WaitFor's conditions run
// under. The close code and reason it sets alone are read only once it has ended.
type Session struct {
	Case     Case
	Result   Result
	Deadline time.Time
	Ctx      context.Context

	start    time.Time
	cancel   context.CancelFunc
	mu       sync.Mutex // guards Result.Messages, Result.Pongs, errs
	errs     []string
	events   chan struct{} // a message or a pong arrived
	received chan struct{} // closed when the receive loop has returned
}

// play runs one case: body (the driver's runCase) does the library's part.
func play(c Case, body func(*Session)) Result {
	if c.TimeoutMS <= 0 {
		c.TimeoutMS = 15000
	}
	s := &Session{
		Case:     c,
		Result:   Result{ID: c.ID, Messages: []Message{}, Unsupported: []string{}},
		start:    time.Now(),
		events:   make(chan struct{}, 1),
		received: make(chan struct{}),
	}
	s.Deadline = s.start.Add(time.Duration(c.TimeoutMS) * time.Millisecond)
	s.Ctx, s.cancel = context.WithDeadline(context.Background(), s.Deadline)
	defer s.cancel()
	body(s) // its deferred clean-up (closing the connection) counts in elapsed_ms
	s.mu.Lock()
	if len(s.errs) > 0 {
		e := strings.Join(s.errs, " | ")
		s.Result.Error = &e
	}
	s.mu.Unlock()
	s.Result.ElapsedMS = time.Since(s.start).Milliseconds()
	return s.Result
}

// Dialed records what the library's dial returned: the handshake's HTTP status when
// it gave the response (resp may be nil), and a failed handshake's error (a
// "timeout" when the deadline has passed). It reports whether the connection is
// open; then the driver calls Opened.
func (s *Session) Dialed(resp *http.Response, err error) bool {
	if resp != nil {
		s.Result.Status = &resp.StatusCode
	}
	if err != nil {
		s.Result.Timeout = s.Expired()
		s.AddErr(err)
		return false
	}
	return true
}

// Opened records an open connection and its negotiated subprotocol ("" for none).
func (s *Session) Opened(protocol string) {
	s.Result.Opened = true
	s.Result.Protocol = &protocol
}

// Expired reports whether the case's deadline has passed.
func (s *Session) Expired() bool { return !time.Now().Before(s.Deadline) }

// Cancel ends Ctx now (before the deadline).
func (s *Session) Cancel() { s.cancel() }

// AddErr records the text of an error the library returned. Errors after the
// deadline are left out: they come from the driver's own timeout abort, not from
// the library.
func (s *Session) AddErr(err error) {
	if err != nil && !s.Expired() {
		s.mu.Lock()
		s.errs = append(s.errs, err.Error())
		s.mu.Unlock()
	}
}

// addMessage records a received data message and wakes WaitFor.
func (s *Session) addMessage(binary bool, data []byte) {
	s.mu.Lock()
	s.Result.Messages = append(s.Result.Messages, Record(binary, data))
	s.mu.Unlock()
	s.notify()
}

// AddPong counts a pong and wakes WaitFor.
func (s *Session) AddPong() {
	s.mu.Lock()
	s.Result.Pongs++
	s.mu.Unlock()
	s.notify()
}

// Pongs is the number of pongs counted so far.
func (s *Session) Pongs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Result.Pongs
}

func (s *Session) notify() {
	select {
	case s.events <- struct{}{}:
	default:
	}
}

// Receive runs the receive loop in its own goroutine: read (the library's read
// call) until it fails, recording each message. The error that ends the loop is the
// close as the API reported it when closeOf finds a close code and reason in it;
// otherwise its text goes to "error". The connection counts as ended once the loop
// has returned.
func (s *Session) Receive(read func() (binary bool, data []byte, err error),
	closeOf func(error) (code int, reason string, ok bool)) {
	go func() {
		defer close(s.received)
		for {
			binary, data, err := read()
			if err != nil {
				if code, reason, ok := closeOf(err); ok {
					s.Result.Code, s.Result.Reason = &code, &reason
				} else {
					s.AddErr(err)
				}
				return
			}
			s.addMessage(binary, data)
		}
	}()
}

// Stopped reports whether the connection has ended or the case has timed out.
func (s *Session) Stopped() bool {
	select {
	case <-s.received:
		return true
	case <-s.Ctx.Done():
		return true
	default:
		return false
	}
}

// WaitFor waits until cond holds, the connection ends or the case times out. cond
// runs under the lock messages and pongs are added under, so it may read
// s.Result.Messages and s.Result.Pongs.
func (s *Session) WaitFor(cond func() bool) {
	for {
		s.mu.Lock()
		ok := cond()
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-s.events:
		case <-s.received:
			return
		case <-s.Ctx.Done():
			return
		}
	}
}

// Steps runs the case's steps in order until one fails, the connection ends or the
// case times out. It does "expect" (wait until that many messages in total have been
// received) and "sleep_ms" (wait, still receiving) itself and gives the others
// ("send", "ping", "close") to step, which does them with the library. An error
// from step ends the steps; it is recorded unless closing(err) says that it only
// reports the connection closing (the receive loop reports the close itself).
func (s *Session) Steps(step func(Step) error, closing func(error) bool) {
	for _, st := range s.Case.Steps {
		if s.Stopped() {
			return
		}
		var err error
		switch {
		case st["expect"] != nil:
			n := int(st["expect"].(float64))
			s.WaitFor(func() bool { return len(s.Result.Messages) >= n })
		case st["sleep_ms"] != nil:
			select {
			case <-time.After(time.Duration(st["sleep_ms"].(float64)) * time.Millisecond):
			case <-s.Ctx.Done():
			}
		default:
			err = step(st)
		}
		if err != nil {
			if !closing(err) {
				s.AddErr(err)
			}
			return
		}
	}
}

// AwaitEnd waits until the connection has ended. On timeout it sets "timeout",
// calls abort (which must make the receive loop return) and waits for the loop.
func (s *Session) AwaitEnd(abort func()) {
	select {
	case <-s.received:
	case <-s.Ctx.Done():
		s.Result.Timeout = true
		abort()
		<-s.received
	}
}

// Run is a driver's main: `--version` prints version (one line naming the library
// and its version); `CASES.json` runs the cases one at a time through runCase and
// prints one JSON line per case, each flushed as it is written.
func Run(version string, runCase func(*Session)) {
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Println(version)
		return
	}
	if len(os.Args) != 2 {
		fmt.Fprintf(os.Stderr, "usage: %s CASES.json | --version\n", filepath.Base(os.Args[0]))
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
		if err := out.Encode(play(c, runCase)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}
