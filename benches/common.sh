# Shared by compare.sh and ab.sh: a free port, waiting for a listener, and Tern's config for
# the load scenarios (the limits every broker gets: inflight 100, queue 10,000).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "broker did not listen on $1" >&2; return 1
}

tern_config() { # port file
  cat > "$2" <<EOC
[[listener]]
bind = "127.0.0.1:$1"
[session]
max_inflight_messages = 100
max_queued_messages = 10000
[sys]
sys_interval = "0s"
[log]
level = "error"
EOC
}
