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
//
// What does not depend on the library is in tests/clients/go/src/wsgatematrix: the
// protocol's types, the message record, a case's deadline and errors, recording the
// handshake, the receive loop around this library's read, the step loop with
// "expect" and "sleep_ms", and the main loop. This file keeps the library's calls.
package main

import (
	"errors"
	"fmt"
	"runtime"
	"strings"

	"github.com/gorilla/websocket"
	"wsgatematrix"
)

// libVersion is set at build time (-ldflags -X) from the Debian package version.
var libVersion = "unknown"

// isCloseErr: errors that only say "the connection is closing/closed"; the reader
// reports the close itself, so these are not recorded (like ConnectionClosed in
// the Python reference).
func isCloseErr(err error) bool {
	var ce *websocket.CloseError
	return errors.Is(err, websocket.ErrCloseSent) || errors.As(err, &ce)
}

func runCase(s *wsgatematrix.Session) {
	c, r := s.Case, &s.Result
	dialer := websocket.Dialer{Subprotocols: c.Protocols}
	conn, resp, err := dialer.DialContext(s.Ctx, c.URL, nil)
	if !s.Dialed(resp, err) {
		return
	}
	defer conn.Close()
	s.Opened(conn.Subprotocol())
	conn.SetReadLimit(64 << 20)
	conn.SetWriteDeadline(s.Deadline)

	conn.SetPongHandler(func(string) error {
		s.AddPong()
		return nil
	})
	s.Receive(func() (bool, []byte, error) {
		typ, data, err := conn.ReadMessage()
		return typ == websocket.BinaryMessage, data, err
	}, func(err error) (int, string, bool) {
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code, ce.Text, true
		}
		return 0, "", false
	})

	s.Steps(func(st wsgatematrix.Step) error {
		switch {
		case st["send"] == "text":
			return conn.WriteMessage(websocket.TextMessage, []byte(st.Text()))
		case st["send"] == "binary":
			return conn.WriteMessage(websocket.BinaryMessage, st.Binary())
		case st["send"] == "fragments":
			r.Unsupported = append(r.Unsupported, "fragments")
			return conn.WriteMessage(websocket.TextMessage, []byte(strings.Join(st.Parts(), "")))
		case st["ping"] != nil:
			before := s.Pongs()
			err := conn.WriteControl(websocket.PingMessage, []byte(st["ping"].(string)), s.Deadline)
			if err == nil {
				s.WaitFor(func() bool { return r.Pongs > before })
			}
			return err
		case st["close"] != nil:
			reason, _ := st["reason"].(string)
			msg := websocket.FormatCloseMessage(int(st["close"].(float64)), reason)
			return conn.WriteControl(websocket.CloseMessage, msg, s.Deadline)
		}
		return nil
	}, isCloseErr)

	// Wait until the connection has ended; on timeout, abort it (close the TCP connection).
	s.AwaitEnd(func() { conn.Close() })
}

func main() {
	wsgatematrix.Run(fmt.Sprintf("gorilla/websocket %s, %s", libVersion, runtime.Version()), runCase)
}
