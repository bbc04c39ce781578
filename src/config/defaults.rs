//! The default `harperdb-config.yaml`, written to `<root>` on first start. Every key a user may set
//! appears here: the flattened override names (`HTTP_PORT`) are derived from this document.

pub const DEFAULT_CONFIG_YAML: &str = r#"# tidepool server configuration (HarperDB 4.x compatible keys).
# Override any key with an environment variable or --KEY value, e.g. HTTP_PORT=127.0.0.1:9000.
http:
  port: 9926                 # REST, WebSocket, SSE; host:port binds one address; null disables
  securePort: null           # the same over TLS
  cors: true
  corsAccessList: null       # null or ["*"] = any origin
  corsAccessControlAllowHeaders: Accept, Content-Type, Authorization
  keepAliveTimeout: 30000    # ms an idle keep-alive connection stays open
  headersTimeout: 60000      # ms to receive a request's head (slowloris guard) -> 408
  timeout: 120000            # ms for a whole request
  maxHeaderSize: 16394       # bytes of request head -> 431
  maxHeaderCount: 100        # header lines per request -> 431 (tidepool)
  maxBodySize: 1073741824    # bytes of request body -> 413 (tidepool)
  maxBodyBytesInFlightPerCore: 268435456   # bytes of request bodies read at once per core; beyond -> 503 (tidepool)
  maxConnectionsPerCore: 65536   # open connections per core; beyond -> 503 and close (tidepool)
  sharePorts: false          # allow another process on the same ports (SO_REUSEPORT) (tidepool)
  portWaitAfterCrash: 20000  # ms to wait at start for a crashed process's sockets to close (tidepool)
  compressionThreshold: 1200
  mtls: false
rest:
  lastModified: false        # Last-Modified on single-record GET/HEAD
operationsApi:
  network:
    port: 9925
    securePort: null
    cors: true
    corsAccessList: null
threads:
  count: null                # null = CPUs in the affinity mask; --cores wins
authentication:
  authorizeLocal: false
  cacheTTL: 30000
  operationTokenTimeout: 1d
  refreshTokenTimeout: 30d
  hashFunction: argon2id      # new passwords; sha256 hashes still verify (and are upgraded at login)
  failedLoginLimit: 30       # failed logins per (source address, user name) per window; 0 = off
  failedLoginWindow: 60s
  enableSessions: true       # cookie sessions (login/logout), docs/security.md
  cookie:
    expires: null            # null = far future (until logout)
    domains: null            # a list: Domain= for a matching host
tls:
  certificate: <root>/keys/certificate.pem
  privateKey: <root>/keys/privateKey.pem
  certificateAuthority: <root>/keys/ca.pem
mqtt:
  network:
    port: 1883
    securePort: 8883
    mtls: false
  webSocket: true
  requireAuthentication: true
  sessionQueueMax: 10000
  generalTopics: false
  maxKeepAlive: 0            # s; v5 clients asking for more (or for none) get this as Server Keep Alive; 0 = no cap (tidepool)
replication:
  hostname: null             # node name; null = the OS hostname
  url: null
  securePort: 9933
  port: null
  routes: []
  databases: "*"
logging:
  level: warn                # trace debug info warn error fatal notify
  root: <root>/log
  path: null                 # null = <logging.root>/hdb.log
  file: true
  stdStreams: false
  auditLog: true
  auditRetention: 3d
  rotation:                  # HarperDB's log rotation: accepted and stored, no effect here (tidepool)
    enabled: false
    maxSize: null
    interval: null
    compress: false
    path: null
localStudio:
  enabled: false             # HarperDB's Studio: accepted and stored, no effect here (tidepool)
customFunctions:
  enabled: false             # HarperDB's custom functions: accepted and stored, no effect here (tidepool)
storage:
  path: <root>/database
  sync: true                 # commit waits for fsync
  writeAsync: false          # true = sync: false
  maxTransactionQueueTime: 45s
  commitBatchMax: 1024       # requests committed (and fsynced) together at most; 1 = one per request (tidepool)
  compression: true
"#;
