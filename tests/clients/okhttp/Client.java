/*
 * Matrix client for OkHttp 3.13 (OkHttpClient.newWebSocket + WebSocketListener), plain Java.
 * PROTOCOL.md is the contract: reads CASES.json, prints one JSON line per case with what the
 * listener callbacks reported. OkHttp's public API has no ping-with-payload (pingInterval only
 * sends automatic pings and exposes no pongs) and no fragments: both are listed in `unsupported`.
 * There is no JSON library on the classpath, hence the tiny reader/writer at the bottom.
 */

import java.io.FileOutputStream;
import java.io.FileDescriptor;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.*;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import okhttp3.*;
import okio.ByteString;

public final class Client {
  public static void main(String[] args) throws Exception {
    PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, "UTF-8");
    if (args.length == 1 && args[0].equals("--version")) {
      String ua = okhttp3.internal.Version.userAgent(); // "okhttp/3.13.1"
      out.println("OkHttp " + ua.substring(ua.indexOf('/') + 1) + ", Java " + System.getProperty("java.version"));
      return;
    }
    // The case timeout governs, as in the other clients: no library timeouts.
    OkHttpClient client = new OkHttpClient.Builder().connectTimeout(0, TimeUnit.MILLISECONDS)
        .readTimeout(0, TimeUnit.MILLISECONDS).writeTimeout(0, TimeUnit.MILLISECONDS).build();
    List<?> cases = (List<?>) new Json(new String(Files.readAllBytes(Paths.get(args[0])), StandardCharsets.UTF_8)).value();
    for (Object c : cases) out.println(Json.write(new Case((Map<?, ?>) c).run(client), new StringBuilder()));
    out.flush();
    client.dispatcher().executorService().shutdownNow();
    client.connectionPool().evictAll();
    System.exit(0); // RealWebSocket writer threads of timed-out cases may linger
  }

  static final class Case extends WebSocketListener {
    final Map<?, ?> c;
    final Map<String, Object> r = new LinkedHashMap<>();
    final List<Object> messages = new ArrayList<>();
    final List<String> errors = new ArrayList<>();
    final Set<String> unsupported = new LinkedHashSet<>();
    boolean opened, ended, done;

    Case(Map<?, ?> c) {
      this.c = c;
      for (String k : new String[] {"id", "opened", "status", "protocol", "messages", "pongs", "code", "reason",
          "clean", "error", "unsupported", "timeout", "elapsed_ms"}) r.put(k, null);
      r.put("id", c.get("id"));
      r.put("opened", false);
      r.put("messages", messages);
      r.put("pongs", 0);
      r.put("timeout", false);
    }

    @SuppressWarnings("unchecked") // the case's lists of strings
    Map<String, Object> run(OkHttpClient client) throws InterruptedException {
      long start = System.nanoTime();
      Object t = c.get("timeout_ms");
      long deadline = start + TimeUnit.MILLISECONDS.toNanos(t == null ? 15000 : ((Number) t).longValue());
      Request.Builder req = new Request.Builder().url((String) c.get("url"));
      List<?> protocols = (List<?>) c.get("protocols");
      if (protocols != null && !protocols.isEmpty()) req.header("Sec-WebSocket-Protocol", String.join(", ", (List<String>) protocols));
      WebSocket ws = client.newWebSocket(req.build(), this);
      until(() -> opened, deadline);
      List<?> steps = c.get("steps") == null ? List.of() : (List<?>) c.get("steps");
      for (Object o : isOpened() ? steps : List.of()) {
        if (isEnded() || System.nanoTime() >= deadline) break;
        Map<?, ?> s = (Map<?, ?>) o;
        try {
          if (s.containsKey("send")) {
            if (s.get("send").equals("binary")) ws.send(ByteString.decodeHex((String) s.get("hex")));
            else if (s.get("send").equals("fragments")) {
              addUnsupported("fragments");
              ws.send(String.join("", (List<String>) s.get("parts")));
            } else if (s.containsKey("repeat")) ws.send(((String) s.get("repeat")).repeat(((Number) s.get("times")).intValue()));
            else ws.send((String) s.get("data"));
          } else if (s.containsKey("expect")) {
            int n = ((Number) s.get("expect")).intValue();
            until(() -> messages.size() >= n, deadline);
          } else if (s.containsKey("ping")) {
            addUnsupported("ping");
          } else if (s.containsKey("sleep_ms")) {
            long ms = ((Number) s.get("sleep_ms")).longValue();
            until(() -> false, Math.min(deadline, System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(ms)));
          } else if (s.containsKey("close")) {
            ws.close(((Number) s.get("close")).intValue(), (String) s.get("reason"));
          }
        } catch (RuntimeException e) { // e.g. IllegalArgumentException for a reserved close code
          synchronized (this) { errors.add(e.toString()); }
        }
      }
      until(() -> false, deadline);
      synchronized (this) {
        if (!ended) {
          r.put("timeout", true);
          ws.cancel();
        }
        done = true;
        r.put("unsupported", new ArrayList<>(unsupported));
        r.put("error", errors.isEmpty() ? null : String.join(" | ", errors));
        r.put("elapsed_ms", TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start));
        return r;
      }
    }

    /** Waits (still receiving) until cond holds, the connection has ended, or the deadline (nanoTime) passes. */
    synchronized void until(BooleanSupplier cond, long deadline) throws InterruptedException {
      long left;
      while (!cond.getAsBoolean() && !ended && (left = deadline - System.nanoTime()) > 0)
        TimeUnit.NANOSECONDS.timedWait(this, left);
    }

    synchronized boolean isOpened() { return opened; }
    synchronized boolean isEnded() { return ended; }
    synchronized void addUnsupported(String what) { unsupported.add(what); }

    @Override public synchronized void onOpen(WebSocket ws, Response response) {
      if (done) return;
      opened = true;
      r.put("opened", true);
      r.put("status", response.code());
      String p = response.header("Sec-WebSocket-Protocol");
      r.put("protocol", p == null ? "" : p);
      notifyAll();
    }

    @Override public void onMessage(WebSocket ws, String text) { message("text", text.getBytes(StandardCharsets.UTF_8), text); }
    @Override public void onMessage(WebSocket ws, ByteString bytes) { message("binary", bytes.toByteArray(), bytes.hex()); }

    synchronized void message(String type, byte[] raw, String small) {
      if (done) return;
      int h = 0x811c9dc5;
      for (byte b : raw) h = (h ^ (b & 0xff)) * 0x01000193;
      Map<String, Object> m = new LinkedHashMap<>();
      m.put("type", type);
      m.put("len", raw.length);
      m.put("fnv", String.format("%08x", h));
      m.put("data", raw.length <= 64 ? small : null);
      messages.add(m);
      notifyAll();
    }

    @Override public void onClosing(WebSocket ws, int code, String reason) {
      synchronized (this) {
        if (done) return;
        r.put("code", code);
        r.put("reason", reason);
      }
      ws.close(1000, null); // the usual reply; a no-op if we started the close
    }

    @Override public synchronized void onClosed(WebSocket ws, int code, String reason) {
      if (done) return;
      r.put("code", code);
      r.put("reason", reason);
      ended = true;
      notifyAll();
    }

    @Override public synchronized void onFailure(WebSocket ws, Throwable t, Response response) {
      if (done) return;
      errors.add(t.toString());
      if (response != null) r.put("status", response.code());
      ended = true;
      notifyAll();
    }
  }

  /** Just enough JSON: objects, arrays, strings (with escapes), numbers, true/false/null. */
  static final class Json {
    final String s;
    int i;

    Json(String s) { this.s = s; }

    Object value() {
      skip();
      char ch = s.charAt(i);
      if (ch == '{') {
        Map<String, Object> m = new LinkedHashMap<>();
        if (next('{', '}')) return m;
        do { skip(); String k = string(); skip(); expect(':'); m.put(k, value()); skip(); } while (eat(','));
        expect('}');
        return m;
      }
      if (ch == '[') {
        List<Object> l = new ArrayList<>();
        if (next('[', ']')) return l;
        do l.add(value()); while (eat(','));
        expect(']');
        return l;
      }
      if (ch == '"') return string();
      for (String lit : new String[] {"true", "false", "null"})
        if (s.startsWith(lit, i)) { i += lit.length(); return lit.equals("null") ? null : (Object) lit.equals("true"); }
      int j = i;
      while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) i++;
      if (j == i) throw new IllegalArgumentException("JSON: unexpected '" + ch + "' at " + j);
      return Double.valueOf(s.substring(j, i));
    }

    String string() {
      expect('"');
      StringBuilder b = new StringBuilder();
      for (char ch; (ch = s.charAt(i++)) != '"'; ) {
        if (ch != '\\') { b.append(ch); continue; }
        ch = s.charAt(i++);
        int k = "\"\\/bfnrt".indexOf(ch);
        if (k >= 0) b.append("\"\\/\b\f\n\r\t".charAt(k));
        else if (ch == 'u') { b.append((char) Integer.parseInt(s.substring(i, i + 4), 16)); i += 4; }
        else throw new IllegalArgumentException("JSON: bad escape at " + i);
      }
      return b.toString();
    }

    void skip() { while (i < s.length() && Character.isWhitespace(s.charAt(i))) i++; }
    boolean eat(char ch) { skip(); if (i < s.length() && s.charAt(i) == ch) { i++; return true; } return false; }
    boolean next(char open, char close) { expect(open); return eat(close); }
    void expect(char ch) { if (!eat(ch)) throw new IllegalArgumentException("JSON: expected '" + ch + "' at " + i); }

    static StringBuilder write(Object v, StringBuilder b) {
      if (v instanceof String) {
        b.append('"');
        for (char ch : ((String) v).toCharArray()) {
          if (ch == '"' || ch == '\\') b.append('\\').append(ch);
          else if (ch < 0x20) b.append(String.format("\\u%04x", (int) ch));
          else b.append(ch);
        }
        return b.append('"');
      }
      if (v instanceof Map) {
        String sep = "{";
        for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) { write(e.getKey(), b.append(sep)).append(':'); write(e.getValue(), b); sep = ","; }
        return b.append(sep.equals("{") ? "{}" : "}");
      }
      if (v instanceof Collection) {
        String sep = "[";
        for (Object o : (Collection<?>) v) { write(o, b.append(sep)); sep = ","; }
        return b.append(sep.equals("[") ? "[]" : "]");
      }
      return b.append(v); // Number, Boolean, null
    }
  }
}
