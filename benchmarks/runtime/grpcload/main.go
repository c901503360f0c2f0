// grpcload calls one unary gRPC method as fast as it can, with a request serialized once
// beforehand, and prints what it measured as one JSON line. It is the runtime benchmark's
// lean gRPC client: ghz builds every request from a template and decodes every response
// into a dynamic message, which costs more client CPU per call than the server spends on it,
// so on a one-core client it measures itself. This client only frames the bytes.
//
//	grpcload -target 127.0.0.1:8081 -method /inference.GRPCInferenceService/ModelInfer \
//	    -data request.bin -c 64 -d 3s
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
)

// rawCodec sends and receives message bytes as they are: the request is serialized once,
// the response is kept unparsed (its length is checked, nothing else).
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: %T is not *[]byte", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: %T is not *[]byte", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}

type result struct {
	Requests   int      `json:"requests"`
	Errors     int      `json:"errors"`
	ErrorKinds []string `json:"error_kinds"`
	DurationUs int64    `json:"duration_us"`
	P50Us      float64  `json:"p50_us"`
	P99Us      float64  `json:"p99_us"`
}

func main() {
	target := flag.String("target", "", "host:port")
	method := flag.String("method", "/inference.GRPCInferenceService/ModelInfer", "full method")
	data := flag.String("data", "", "file holding the serialized request message")
	conc := flag.Int("c", 1, "calls in flight (one connection)")
	duration := flag.Duration("d", 3*time.Second, "how long to call")
	procs := flag.Int("cpus", 1, "GOMAXPROCS")
	flag.Parse()
	if *target == "" || *data == "" {
		fmt.Fprintln(os.Stderr, "grpcload: -target and -data are required")
		os.Exit(2)
	}
	runtime.GOMAXPROCS(*procs)
	req, err := os.ReadFile(*data)
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcload:", err)
		os.Exit(2)
	}
	conn, err := grpc.NewClient(*target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcload:", err)
		os.Exit(1)
	}
	defer conn.Close()
	// One call first: the connection is up before the clock starts.
	var first []byte
	if err := conn.Invoke(context.Background(), *method, &req, &first); err != nil {
		fmt.Fprintln(os.Stderr, "grpcload: first call failed:", err)
		os.Exit(1)
	}

	var mu sync.Mutex
	var latencies []time.Duration
	kinds := map[string]bool{}
	errCount := 0
	start := time.Now()
	deadline := start.Add(*duration)
	var wg sync.WaitGroup
	for i := 0; i < *conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			own := make([]time.Duration, 0, 1<<16)
			var resp []byte
			fails := 0
			var kind string
			for {
				t := time.Now()
				if !t.Before(deadline) {
					break
				}
				err := conn.Invoke(context.Background(), *method, &req, &resp)
				if err != nil {
					fails++
					kind = err.Error()
					continue
				}
				if len(resp) == 0 {
					fails++
					kind = "empty response"
					continue
				}
				own = append(own, time.Since(t))
			}
			mu.Lock()
			latencies = append(latencies, own...)
			errCount += fails
			if kind != "" {
				kinds[kind] = true
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(latencies) == 0 {
		fmt.Fprintln(os.Stderr, "grpcload:", errors.New("no call succeeded"))
		os.Exit(1)
	}
	sort.Slice(latencies, func(a, b int) bool { return latencies[a] < latencies[b] })
	pct := func(p float64) float64 {
		i := int(p * float64(len(latencies)-1))
		return float64(latencies[i].Nanoseconds()) / 1000
	}
	out := result{
		Requests:   len(latencies),
		Errors:     errCount,
		ErrorKinds: []string{},
		DurationUs: elapsed.Microseconds(),
		P50Us:      pct(0.50),
		P99Us:      pct(0.99),
	}
	for k := range kinds {
		out.ErrorKinds = append(out.ErrorKinds, k)
	}
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}
