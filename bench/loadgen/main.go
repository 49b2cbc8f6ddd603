// Command loadgen drives N concurrent streaming requests at an HTTP server and reports,
// for each request, its time to first token, its duration, the tokens it saw and its error,
// plus the load generator's own CPU time, as one JSON object on stdout.
//
// It exists because on a small machine a Python load generator spends as much CPU parsing
// server-sent events as the server under test spends producing them, which skews the
// ratios the benchmark reports. Only the standard library is used.
//
// Protocols:
//
//	openai  POST -url with -body; the answer is OpenAI server-sent events (`data: {...}`,
//	        then `data: [DONE]`); `tokens` counts the chunks with non-empty
//	        choices[].delta.content or choices[].text (a proxy may put several tokens in one
//	        chunk), `text_bytes` the answer's bytes; a chunk with "error" is a failed request.
//	gradio  Gradio's queued REST API: POST -url (.../gradio_api/call/<api_name>) with -body
//	        ({"data": [...]}) answers {"event_id"}; GET -url/<event_id> streams
//	        `event: generating|complete|error` events. Each event carrying a non-empty
//	        `'response'` counts as an update; the first one is the first token.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

type result struct {
	TTFT    float64 `json:"ttft_s"`
	Total   float64 `json:"total_s"`
	Tokens  int     `json:"tokens"`     // chunks that carried text: a proxy may send several tokens in one
	Text    int     `json:"text_bytes"` // bytes of answer text, to tell a whole answer from a cut one
	Error   string  `json:"error,omitempty"`
	Started float64 `json:"started_s"`
}

type report struct {
	Wall    float64  `json:"wall_s"`
	CPU     float64  `json:"cpu_s"`
	Results []result `json:"results"`
}

type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

type config struct {
	url      string
	protocol string
	body     []byte
	headers  http.Header
	client   *http.Client
}

type openaiChunk struct {
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
		Text string `json:"text"`
	} `json:"choices"`
	Error json.RawMessage `json:"error"`
}

func main() {
	url := flag.String("url", "", "endpoint to POST to")
	protocol := flag.String("protocol", "openai", "openai or gradio")
	body := flag.String("body", "", "request body (JSON)")
	concurrency := flag.Int("concurrency", 1, "concurrent streams")
	perStream := flag.Int("requests-per-stream", 1, "requests each stream sends one after another")
	timeout := flag.Duration("timeout", 120*time.Second, "per-request timeout")
	spread := flag.Duration("spread", 0, "start the streams evenly over this long (about one request's "+
		"duration gives steady arrivals instead of one burst of -concurrency requests)")
	var headers headerList
	flag.Var(&headers, "header", "extra header 'Name: value' (repeatable)")
	flag.Parse()
	if *url == "" || (*protocol != "openai" && *protocol != "gradio") || *concurrency < 1 || *perStream < 1 {
		fmt.Fprintln(os.Stderr, "loadgen: need -url, -protocol openai|gradio, -concurrency >= 1, -requests-per-stream >= 1")
		os.Exit(2)
	}
	cfg := config{url: *url, protocol: *protocol, body: []byte(*body), headers: http.Header{}}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			fmt.Fprintf(os.Stderr, "loadgen: header %q is not 'Name: value'\n", h)
			os.Exit(2)
		}
		cfg.headers.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	cfg.client = &http.Client{
		Timeout: *timeout,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			MaxIdleConns:        *concurrency * 2,
			MaxIdleConnsPerHost: *concurrency * 2,
			DisableCompression:  true,
		},
	}

	results := make([]result, *concurrency**perStream)
	var wg sync.WaitGroup
	began := time.Now()
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			time.Sleep(time.Duration(int64(*spread) * int64(w) / int64(*concurrency)))
			for i := 0; i < *perStream; i++ {
				results[w**perStream+i] = one(&cfg, began)
			}
		}(w)
	}
	wg.Wait()
	wall := time.Since(began).Seconds()

	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	cpu := float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
	if err := json.NewEncoder(os.Stdout).Encode(report{Wall: wall, CPU: cpu, Results: results}); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func one(cfg *config, began time.Time) result {
	start := time.Now()
	r := result{Started: start.Sub(began).Seconds()}
	var err error
	if cfg.protocol == "openai" {
		err = streamOpenAI(cfg, start, &r)
	} else {
		err = streamGradio(cfg, start, &r)
	}
	r.Total = time.Since(start).Seconds()
	if err != nil {
		r.Error = err.Error()
	}
	return r
}

func post(cfg *config, url string, body []byte) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = cfg.headers.Clone()
	req.Header.Set("Content-Type", "application/json")
	return cfg.client.Do(req)
}

func statusError(resp *http.Response) error {
	text, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	return fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(text)))
}

// drain reads what is left so that the connection goes back to the pool.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
}

func streamOpenAI(cfg *config, start time.Time, r *result) error {
	resp, err := post(cfg, cfg.url, cfg.body)
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return statusError(resp)
	}
	reader := bufio.NewReaderSize(resp.Body, 64*1024)
	for {
		line, err := reader.ReadSlice('\n')
		if err == io.EOF {
			return fmt.Errorf("stream ended without [DONE] after %d tokens", r.Tokens)
		}
		if err != nil && err != bufio.ErrBufferFull {
			return err
		}
		payload, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			continue
		}
		payload = bytes.TrimSpace(payload)
		if bytes.Equal(payload, []byte("[DONE]")) {
			return nil
		}
		var chunk openaiChunk
		if err := json.Unmarshal(payload, &chunk); err != nil {
			return fmt.Errorf("bad chunk %q: %v", payload, err)
		}
		if len(chunk.Error) > 0 && !bytes.Equal(chunk.Error, []byte("null")) {
			return fmt.Errorf("error chunk: %s", chunk.Error)
		}
		for _, choice := range chunk.Choices {
			if choice.Delta.Content != "" || choice.Text != "" {
				if r.Tokens == 0 {
					r.TTFT = time.Since(start).Seconds()
				}
				r.Tokens++
				r.Text += len(choice.Delta.Content) + len(choice.Text)
			}
		}
	}
}

func streamGradio(cfg *config, start time.Time, r *result) error {
	resp, err := post(cfg, cfg.url, cfg.body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		defer drain(resp)
		return statusError(resp)
	}
	var submitted struct {
		EventID string `json:"event_id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&submitted)
	drain(resp)
	if err != nil || submitted.EventID == "" {
		return fmt.Errorf("no event_id in the answer (%v)", err)
	}
	req, err := http.NewRequest(http.MethodGet, cfg.url+"/"+submitted.EventID, nil)
	if err != nil {
		return err
	}
	req.Header = cfg.headers.Clone()
	events, err := cfg.client.Do(req)
	if err != nil {
		return err
	}
	defer drain(events)
	if events.StatusCode != http.StatusOK {
		return statusError(events)
	}
	reader := bufio.NewReaderSize(events.Body, 256*1024)
	kind := ""
	for {
		line, err := reader.ReadString('\n')
		if err == io.EOF {
			return fmt.Errorf("stream ended without a complete event after %d updates", r.Tokens)
		}
		if err != nil {
			return err
		}
		line = strings.TrimRight(line, "\r\n")
		if name, ok := strings.CutPrefix(line, "event:"); ok {
			kind = strings.TrimSpace(name)
			continue
		}
		data, ok := strings.CutPrefix(line, "data:")
		if !ok {
			continue
		}
		switch kind {
		case "error":
			return fmt.Errorf("gradio error event: %s", strings.TrimSpace(data))
		case "generating", "complete":
			// The output is str() of h2oGPT's dict; an empty answer shows as 'response': ''.
			if !strings.Contains(data, `'response': ''`) && strings.Contains(data, `'response': `) {
				if r.Tokens == 0 {
					r.TTFT = time.Since(start).Seconds()
				}
				r.Tokens++
			}
			if strings.Contains(data, `'error': '`) {
				return fmt.Errorf("h2oGPT error in output: %.300s", data)
			}
			if kind == "complete" {
				return nil
			}
		}
	}
}
