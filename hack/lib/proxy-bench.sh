# Pieces shared by hack/bench-proxy.sh and hack/callgrind-proxy.sh, so both measure the same
# nginx set-up and the same request. Sourced, not run.

# What every nginx here starts with, up to the open `http {` block: workers, files in
# DIR/NAME, no access log, keep-alive for the whole run, bodies of any size.
nginx_head() { # dir name workers
    local dir=$1 name=$2 workers=$3
    cat <<EOF
worker_processes $workers;
pid $dir/$name/nginx.pid;
error_log $dir/$name/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path $dir/$name/body;
    client_max_body_size 0;
EOF
}

# The upstream: nginx (1 worker) answering every request with a fixed TensorFlow-Serving
# body, and serving DIR/big.bin at /big for the transfer check.
write_upstream_conf() { # dir port
    local dir=$1 port=$2
    mkdir -p "$dir/up"
    {
        nginx_head "$dir" up 1
        cat <<EOF
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            default_type application/json;
            return 200 '{"predictions": [[0.05, 0.9, 0.05]]}';
        }
        location = /big { alias $dir/big.bin; }
    }
}
EOF
    } >"$dir/up/nginx.conf"
}

# The reference: nginx as a reverse proxy (proxy_pass with an upstream keepalive pool), in
# DIR/ngx. With a fifth argument, a second server on that port also does the header work
# ds model-proxy does on every request: a request ID to the model and back to the client,
# and X-Forwarded-For. NGINX_MASTER=off runs it as one process (for callgrind).
write_proxy_conf() { # dir workers port upstream-port [header-work-port]
    local dir=$1 workers=$2 port=$3 upstream=$4 headers=${5:-}
    mkdir -p "$dir/ngx"
    local location='
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;'
    {
        [ "${NGINX_MASTER:-on}" = off ] && echo "master_process off;"
        nginx_head "$dir" ngx "$workers"
        cat <<EOF
    proxy_temp_path $dir/ngx/proxy;
    upstream model {
        server 127.0.0.1:$upstream;
        keepalive 256;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {$location
        }
    }
EOF
        if [ -n "$headers" ]; then
            cat <<EOF
    server {
        listen 127.0.0.1:$headers backlog=4096;
        location / {$location
            proxy_set_header X-Request-Id \$request_id;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            add_header X-Request-Id \$request_id always;
        }
    }
EOF
        fi
        echo "}"
    } >"$dir/ngx/nginx.conf"
}

# The request every run sends: a small TensorFlow-Serving predict call.
write_post_lua() { # file
    cat >"$1" <<'EOF'
wrk.method = "POST"
wrk.body = '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
wrk.headers["Content-Type"] = "application/json"
EOF
}
