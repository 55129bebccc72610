package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/imds-agent/imds-agent/internal/admin"
	"github.com/imds-agent/imds-agent/internal/config"
)

// adminClient finds the running agent's admin socket: the one given, or
// the one its config names. A config that does not load (an edit a reload
// refused, say) is reported, and its admin.socket still used: that is when
// the running agent's status matters most.
func adminClient(path, socket string, stderr io.Writer) *admin.Client {
	if socket != "" {
		return admin.NewClient(socket)
	}
	cfg, err := config.Load(path)
	if err != nil {
		socket = config.AdminSocket(path)
		fmt.Fprintf(stderr, "imds-agent: warning: %v\nimds-agent: trying the admin socket %s\n", err, socket)
		return admin.NewClient(socket)
	}
	return admin.NewClient(cfg.Admin.Socket)
}

func showStatus(path, socket string, asJSON bool, w, stderr io.Writer) error {
	c := adminClient(path, socket, stderr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printStatus(w, st, time.Now())
	return nil
}

func requestRefresh(path, socket string, w, stderr io.Writer) error {
	c := adminClient(path, socket, stderr)
	ctx, cancel := context.WithTimeout(context.Background(), admin.RefreshTimeout+10*time.Second)
	defer cancel()
	st, err := c.Refresh(ctx)
	if err != nil {
		return fmt.Errorf("refresh failed: %w", err)
	}
	if st.State != "ready" {
		fmt.Fprintf(w, "refreshed: %s (%s)\n", st.State, st.Target)
		return nil
	}
	fmt.Fprintf(w, "refreshed: role %s, access key …%s, expires %s\n", st.Role, st.AccessKeySuffix, st.Expiration.UTC().Format(time.RFC3339))
	return nil
}

// printStatus renders a status for people.
func printStatus(w io.Writer, st admin.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, args...)) }
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		d := now.Sub(t).Round(time.Second)
		if d < 0 {
			return fmt.Sprintf("%s (in %s)", t.UTC().Format(time.RFC3339), (-d).String())
		}
		return fmt.Sprintf("%s (%s ago)", t.UTC().Format(time.RFC3339), d.String())
	}
	row("agent", "imds-agent %s, pid %d, up %s", st.Version, st.PID, now.Sub(st.Started).Round(time.Second))
	row("instance", "%s in %s", st.InstanceID, st.Region)
	row("attached", "%s", st.Target)
	if st.RoleARN != "" {
		row("role", "%s", st.RoleARN)
	}
	if st.InstanceProfile != "" {
		row("instance profile", "%s", st.InstanceProfile)
	}
	switch st.State {
	case "ready":
		state := "current"
		if !st.Expiration.After(now) {
			state = "EXPIRED (still served, as EC2 does, while refreshing fails)"
		}
		row("credentials", "%s; access key …%s, expires %s", state, st.AccessKeySuffix, ago(st.Expiration))
	case "pending":
		row("credentials", "none yet")
	default:
		row("credentials", "none: no role attached (the iam paths answer 404, as on EC2)")
	}
	row("last refresh", "%s", ago(st.LastRefresh))
	if !st.NextRefresh.IsZero() {
		row("next refresh", "%s", ago(st.NextRefresh))
	}
	row("refreshes", "%d succeeded, %d failed", st.Refreshes, st.Failures)
	if st.LookupFailures > 0 {
		row("profile look-ups", "%d failed", st.LookupFailures)
	}
	if st.LastError != "" {
		row("last error", "%s (%s, %s)", st.LastError, st.LastErrorClass, ago(st.LastErrorAt))
	} else {
		row("last error", "none")
	}
	if st.ConsecutiveFailures > 0 {
		row("failing", "%d attempts in a row", st.ConsecutiveFailures)
	}
	listen := strings.Join(st.Listen, ", ")
	if st.Link != "" {
		listen += " on " + st.Link
	}
	row("listening", "%s", listen)
	tokens := "required (IMDSv2 only)"
	if !st.TokensRequired {
		tokens = "optional (IMDSv1 allowed)"
	}
	if !st.EndpointEnabled {
		tokens = "endpoint disabled"
	}
	row("tokens", "%s", tokens)
	if !st.ConfigLoaded.IsZero() { // an agent from before this field says nothing
		row("configuration", "loaded %s", ago(st.ConfigLoaded))
	}
	if st.ReloadError != "" {
		row("reload refused", "%s, the running configuration stays: %s", ago(st.ReloadFailedAt), st.ReloadError)
	}
	if len(st.RestartPending) > 0 {
		row("restart pending", "%s changed in the file; they apply on restart", strings.Join(st.RestartPending, ", "))
	}
	row("clients", "%d open connections; %d idle or incomplete ones shed under load", st.Clients, st.ClientsShed)
	if st.Metrics != "" {
		row("metrics", "http://%s/metrics", st.Metrics)
	}
	if st.AuditDropped > 0 {
		row("audit", "%d records dropped", st.AuditDropped)
	}
	_ = tw.Flush()
}
