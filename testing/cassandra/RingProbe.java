// Looks at a test ring of Cassandra nodes on loopback (`cassandra ring-start`)
// the way nodetool would, with the JDK alone: each node's own view through
// its local JMX port (operation mode, failure detector, token ring) and a CQL
// query on its native port. Compiled and run by testing/cassandra/cassandra.
//
//   java RingProbe check NATIVE_PORT IP=JMX_PORT...
//     exit 0 when every listed node answers a CQL query on IP:NATIVE_PORT, is
//     NORMAL, and sees every other listed node UP (its current run, by its
//     gossip generation), NORMAL, owning tokens and ready for CQL; else
//     prints one line per node that is not there yet, exit 1
//   java RingProbe status NATIVE_PORT IP=JMX_PORT...
//     prints every listed node's view, one line each
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.TreeSet;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnector;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

public class RingProbe {
  static final class View {
    String ip;
    String cql = "?";
    String mode = "?";
    boolean nativeRunning;
    Map<String, String> states = new TreeMap<>(); // peer ip -> UP/DOWN
    TreeSet<String> owners = new TreeSet<>(); // ips owning tokens
    // From its gossip state, per ip (itself too): generation (the start of
    // that node's current run), STATUS_WITH_PORT and RPC_READY.
    Map<String, String> generation = new TreeMap<>();
    Map<String, String> status = new TreeMap<>();
    Map<String, String> rpcReady = new TreeMap<>();
    String error;
  }

  public static void main(String[] args) throws Exception {
    if (args.length < 3 || !(args[0].equals("check") || args[0].equals("status"))) {
      System.err.println("usage: RingProbe check|status NATIVE_PORT IP=JMX_PORT...");
      System.exit(2);
    }
    // A node that is stopped (SIGSTOP) or swamped must not hang the probe.
    System.setProperty("sun.rmi.transport.connectionTimeout", "3000");
    System.setProperty("sun.rmi.transport.tcp.responseTimeout", "5000");
    Thread watchdog = new Thread(() -> {
      try {
        Thread.sleep(40_000);
      } catch (InterruptedException e) {
        return;
      }
      System.out.println("probe: no answer within 40s");
      System.exit(3);
    });
    watchdog.setDaemon(true);
    watchdog.start();

    int nativePort = Integer.parseInt(args[1]);
    List<String> ips = new ArrayList<>();
    List<View> views = new ArrayList<>();
    List<Thread> lookers = new ArrayList<>();
    for (int i = 2; i < args.length; i++) {
      String[] kv = args[i].split("=", 2);
      View v = new View();
      v.ip = kv[0];
      ips.add(v.ip);
      views.add(v);
      int jmxPort = Integer.parseInt(kv[1]);
      Thread looker = new Thread(() -> look(v, jmxPort, nativePort));
      looker.setDaemon(true);
      looker.start();
      lookers.add(looker);
    }
    // All at once, each for up to 15s: a frozen node answers nothing.
    long deadline = System.nanoTime() + 15_000_000_000L;
    for (int i = 0; i < lookers.size(); i++) {
      lookers.get(i).join(Math.max(1, (deadline - System.nanoTime()) / 1_000_000));
      if (lookers.get(i).isAlive()) {
        View stuck = new View();
        stuck.ip = views.get(i).ip;
        stuck.cql = views.get(i).cql;
        stuck.error = "no answer over JMX within 15s";
        views.set(i, stuck);
      }
    }

    Map<String, String> ownGeneration = new TreeMap<>();
    for (View v : views) {
      if (v.generation.containsKey(v.ip)) ownGeneration.put(v.ip, v.generation.get(v.ip));
    }

    boolean allGood = true;
    for (View v : views) {
      List<String> missing = new ArrayList<>();
      if (v.error != null) missing.add(v.error);
      if (!v.cql.equals("ok")) missing.add("CQL: " + v.cql);
      if (!v.mode.equals("NORMAL")) missing.add("mode " + v.mode);
      if (v.error == null && !v.nativeRunning) missing.add("native transport not running");
      for (String peer : ips) {
        if (peer.equals(v.ip)) {
          if (v.error == null && !v.owners.contains(peer)) missing.add("owns no tokens");
          continue;
        }
        String state = v.states.getOrDefault(peer, "unknown");
        String own = ownGeneration.get(peer);
        if (!state.equals("UP")) missing.add(peer + " " + state);
        else if (own != null && !own.equals(v.generation.get(peer)))
          missing.add(peer + " UP but an older run of it (generation " + v.generation.get(peer) + ", not " + own + ")");
        else if (!v.owners.contains(peer) || !v.status.getOrDefault(peer, "").startsWith("NORMAL"))
          missing.add(peer + " UP but not NORMAL (" + v.status.getOrDefault(peer, "no status") + ")");
        else if (!"true".equals(v.rpcReady.get(peer))) missing.add(peer + " UP but its CQL not ready");
      }
      if (args[0].equals("status")) {
        System.out.println(v.ip + ": mode " + v.mode + ", CQL " + v.cql + ", sees " + describe(v)
            + (missing.isEmpty() ? "" : "; not ready: " + String.join(", ", missing)));
      } else if (!missing.isEmpty()) {
        System.out.println(v.ip + ": " + String.join(", ", missing));
      }
      allGood &= missing.isEmpty();
    }
    System.exit(allGood ? 0 : 1);
  }

  static String describe(View v) {
    List<String> parts = new ArrayList<>();
    for (Map.Entry<String, String> e : v.states.entrySet()) {
      parts.add(e.getKey() + " " + e.getValue() + (v.owners.contains(e.getKey()) ? " NORMAL" : " (no tokens)"));
    }
    return parts.isEmpty() ? "nobody" : String.join(", ", parts);
  }

  static void look(View v, int jmxPort, int nativePort) {
    String ip = v.ip;
    v.cql = cql(ip, nativePort);
    JMXServiceURL url;
    try {
      url = new JMXServiceURL("service:jmx:rmi:///jndi/rmi://127.0.0.1:" + jmxPort + "/jmxrmi");
    } catch (IOException e) {
      throw new IllegalStateException(e);
    }
    try (JMXConnector connector = JMXConnectorFactory.connect(url)) {
      MBeanServerConnection mbeans = connector.getMBeanServerConnection();
      ObjectName ss = new ObjectName("org.apache.cassandra.db:type=StorageService");
      ObjectName fd = new ObjectName("org.apache.cassandra.net:type=FailureDetector");
      v.mode = String.valueOf(mbeans.getAttribute(ss, "OperationMode"));
      v.nativeRunning = Boolean.TRUE.equals(mbeans.getAttribute(ss, "NativeTransportRunning"));
      @SuppressWarnings("unchecked")
      Map<String, String> states = (Map<String, String>) mbeans.getAttribute(fd, "SimpleStatesWithPort");
      for (Map.Entry<String, String> e : states.entrySet()) {
        String peer = host(e.getKey());
        if (!peer.equals(ip)) v.states.put(peer, e.getValue());
      }
      @SuppressWarnings("unchecked")
      Map<String, String> ring = (Map<String, String>) mbeans.getAttribute(ss, "TokenToEndpointWithPortMap");
      for (String endpoint : ring.values()) v.owners.add(host(endpoint));
      String gossip = String.valueOf(mbeans.getAttribute(fd, "AllEndpointStatesWithPort"));
      String endpoint = null;
      for (String line : gossip.split("\n")) {
        if (!line.startsWith(" ")) {
          endpoint = host(line.trim());
        } else if (endpoint != null) {
          String item = line.trim();
          if (item.startsWith("generation:")) v.generation.put(endpoint, item.substring(11));
          // APPLICATION_STATE:VERSION:VALUE
          String[] parts = item.split(":", 3);
          if (parts.length == 3 && parts[0].equals("STATUS_WITH_PORT")) v.status.put(endpoint, parts[2]);
          if (parts.length == 3 && parts[0].equals("RPC_READY")) v.rpcReady.put(endpoint, parts[2]);
        }
      }
    } catch (Exception e) {
      v.error = "JMX: " + e.getClass().getSimpleName() + (e.getMessage() == null ? "" : " " + firstLine(e.getMessage()));
    }
  }

  // "/127.0.0.2:7000", "localhost/127.0.0.2:7000" or "127.0.0.2:7000" -> "127.0.0.2"
  static String host(String endpoint) {
    String s = endpoint.substring(endpoint.lastIndexOf('/') + 1);
    int colon = s.lastIndexOf(':');
    return colon > 0 && s.indexOf(':') == colon ? s.substring(0, colon) : s;
  }

  static String firstLine(String s) {
    int nl = s.indexOf('\n');
    String line = nl < 0 ? s : s.substring(0, nl);
    return line.length() > 120 ? line.substring(0, 120) + "..." : line;
  }

  // STARTUP, then SELECT release_version FROM system.local (native protocol v4).
  static String cql(String ip, int port) {
    try (Socket socket = new Socket()) {
      socket.connect(new InetSocketAddress(ip, port), 3000);
      socket.setSoTimeout(5_000);
      DataOutputStream out = new DataOutputStream(socket.getOutputStream());
      DataInputStream in = new DataInputStream(socket.getInputStream());

      java.io.ByteArrayOutputStream body = new java.io.ByteArrayOutputStream();
      DataOutputStream b = new DataOutputStream(body);
      b.writeShort(1);
      string(b, "CQL_VERSION");
      string(b, "3.0.0");
      frame(out, 1, 0x01, body.toByteArray());
      byte[] reply = read(in, 0x02, "STARTUP");
      if (reply == null) return "no READY";

      body.reset();
      byte[] query = "SELECT release_version FROM system.local".getBytes(StandardCharsets.UTF_8);
      b.writeInt(query.length);
      b.write(query);
      b.writeShort(0x0001); // ONE
      b.writeByte(0); // no flags
      frame(out, 2, 0x07, body.toByteArray());
      reply = read(in, 0x08, "QUERY");
      if (reply == null) return "no RESULT";
      int kind = ((reply[0] & 0xff) << 24) | ((reply[1] & 0xff) << 16) | ((reply[2] & 0xff) << 8) | (reply[3] & 0xff);
      return kind == 2 ? "ok" : "result kind " + kind;
    } catch (IOException e) {
      return e.getClass().getSimpleName() + (e.getMessage() == null ? "" : " " + firstLine(e.getMessage()));
    }
  }

  static void string(DataOutputStream b, String s) throws IOException {
    byte[] bytes = s.getBytes(StandardCharsets.UTF_8);
    b.writeShort(bytes.length);
    b.write(bytes);
  }

  static void frame(DataOutputStream out, int stream, int opcode, byte[] body) throws IOException {
    out.writeByte(0x04);
    out.writeByte(0);
    out.writeShort(stream);
    out.writeByte(opcode);
    out.writeInt(body.length);
    out.write(body);
    out.flush();
  }

  // The body of the next frame if its opcode is the expected one; an ERROR
  // frame becomes an IOException with the server's message.
  static byte[] read(DataInputStream in, int expected, String what) throws IOException {
    in.readUnsignedByte(); // version
    in.readUnsignedByte(); // flags
    in.readUnsignedShort(); // stream
    int opcode = in.readUnsignedByte();
    int length = in.readInt();
    if (length < 0 || length > (16 << 20)) throw new IOException(what + ": bad frame length " + length);
    byte[] body = new byte[length];
    in.readFully(body);
    if (opcode == 0x00 && length >= 6) {
      int msgLen = ((body[4] & 0xff) << 8) | (body[5] & 0xff);
      throw new IOException(what + ": server error: "
          + new String(body, 6, Math.min(msgLen, length - 6), StandardCharsets.UTF_8));
    }
    return opcode == expected ? body : null;
  }
}
