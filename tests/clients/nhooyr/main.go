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

	"nhooyr.io/websocket"
	"wsgatematrix"
)

// libVersion is set at build time (-ldflags -X) from the Debian package version.
var libVersion = "unknown"

// isCloseErr: errors that only say "the connection is closing/closed"; the reader
// reports the close itself, so these are not recorded (like ConnectionClosed in
// the Python reference).
func isCloseErr(err error) bool {
	return websocket.CloseStatus(err) != -1
}

func runCase(s *wsgatematrix.Session) {
	c, ctx := s.Case, s.Ctx
	opts := &websocket.DialOptions{Subprotocols: c.Protocols, CompressionMode: websocket.CompressionDisabled}
	conn, resp, err := websocket.Dial(ctx, c.URL, opts)
	if !s.Dialed(resp, err) {
		return
	}
	s.Opened(conn.Subprotocol())
	conn.SetReadLimit(64 << 20)

	s.Receive(func() (bool, []byte, error) {
		typ, data, err := conn.Read(ctx)
		return typ == websocket.MessageBinary, data, err
	}, func(err error) (int, string, bool) {
		var ce websocket.CloseError
		if errors.As(err, &ce) {
			return int(ce.Code), ce.Reason, true
		}
		return 0, "", false
	})

	s.Steps(func(st wsgatematrix.Step) error {
		switch {
		case st["send"] == "text":
			return conn.Write(ctx, websocket.MessageText, []byte(st.Text()))
		case st["send"] == "binary":
			return conn.Write(ctx, websocket.MessageBinary, st.Binary())
		case st["send"] == "fragments":
			w, err := conn.Writer(ctx, websocket.MessageText)
			if err != nil {
				return err
			}
			for _, p := range st.Parts() {
				if _, err := w.Write([]byte(p)); err != nil {
					return err
				}
			}
			return w.Close()
		case st["ping"] != nil:
			err := conn.Ping(ctx)
			if err == nil {
				s.AddPong()
			}
			return err
		case st["close"] != nil:
			reason, _ := st["reason"].(string)
			return conn.Close(websocket.StatusCode(st["close"].(float64)), reason) // waits for the peer's close
		}
		return nil
	}, isCloseErr)

	// Wait until the connection has ended; on timeout, abort it (cancel the case context,
	// which the reader's Read is using).
	s.AwaitEnd(s.Cancel)
}

func main() {
	wsgatematrix.Run(fmt.Sprintf("nhooyr.io/websocket %s, %s", libVersion, runtime.Version()), runCase)
}
